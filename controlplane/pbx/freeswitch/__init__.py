"""FreeSWITCH adapter: our own asyncio Event Socket client (inbound mode)."""

from controlplane.pbx.freeswitch.client import FreeswitchClient
from controlplane.pbx.freeswitch.transport import Connect, tcp_connect

__all__ = ["Connect", "FreeswitchClient", "tcp_connect"]
