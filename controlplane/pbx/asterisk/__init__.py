"""Asterisk through AMI: panoramisk 1.4 behind our adapter, with its known defects fixed.

| panoramisk 1.4 defect (reproduced on Asterisk 22)         | fixed in                          |
|-----------------------------------------------------------|-----------------------------------|
| single-response actions (QueueAdd) hang: "as_list" guess  | every action states ``as_list``   |
| a frozen Asterisk is never noticed (Ping not awaited)     | client: Ping with timeout, drop   |
| a bad password retries forever in silence                 | client: AUTH_FAILED, no retry     |
| reconnect interval < 1 s becomes 0 (``int()``)            | client: our Backoff drives it     |
| a UTF-8 character split across reads is lost              | protocol: our AmiParser, bytes    |
| an exception in a sync handler kills the connection       | protocol: events go to a queue    |
| ``panoramisk.testing`` sets ``utils.EOL = '\\n'`` globally  | protocol: our CRLF serializer     |
"""

from controlplane.pbx.asterisk.client import AsteriskClient

__all__ = ["AsteriskClient"]
