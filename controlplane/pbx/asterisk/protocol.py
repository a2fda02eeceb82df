"""panoramisk's AMIProtocol with our parser, serializer and failure semantics.

panoramisk keeps what it does well: matching responses and event lists to the
action that asked (``Action.add_message`` futures). Our overrides:
- ``data_received`` feeds bytes to :class:`AmiParser`, which decodes complete
  frames only (panoramisk decodes each read with errors='ignore', dropping a
  character split across reads);
- ``send`` writes with our CRLF serializer, so ``panoramisk.testing`` setting
  ``utils.EOL = '\\n'`` for the whole process cannot change our wire format;
- events are handed to the client's queue; no user code runs inside
  ``data_received`` (an exception there closes the transport);
- ``close`` fails every pending action with LinkLost instead of queueing it to
  be re-sent silently after a reconnect;
- the actions of one event-loop turn go out in one write (a mass move's QueueAdds:
  a system call each was an eighth of a login service's CPU).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from panoramisk import actions
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from controlplane.errors import LinkLost, ProtocolError
from controlplane.protocols.ami import AmiParser, serialize_action
from controlplane.protocols.frame import Frame

log = logging.getLogger(__name__)


def frame_to_message(frame: Frame) -> Message:
    """A panoramisk Message for response matching; the lossless Frame rides along.

    Built straight into the case-insensitive store Message keeps (lower-cased key ->
    (key, value)), as ``Message(headers, content=body)`` would, without its per-key
    ``__setitem__``: every member of a QueueStatus answer is one of these, and building
    them that way was a tenth of a login service's CPU in a 1,000-agent move."""
    store: dict[str, tuple[str, Any]] = {}
    for k, v in frame.items:
        store.setdefault(k.lower(), (k, v))  # first value: panoramisk's dict is single-valued
    store["content"] = ("content", frame.body)
    msg: Message = Message.__new__(Message)
    msg._store = store
    msg.manager = None
    msg.frame = frame
    return msg


class CcdrAmiProtocol(AMIProtocol):  # type: ignore[misc]
    factory: Any
    version: str | None
    closed: bool
    last_rx: float  # monotonic time of the last bytes received

    def __init__(self, on_event: Callable[[Frame], None], on_lost: Callable[[Exception | None], None],
                 on_bad_frame: Callable[[ProtocolError], None], tap: Callable[[bytes], None] | None = None) -> None:
        self._on_event = on_event
        self._tap = tap
        self._on_lost = on_lost
        self.parser = AmiParser(on_error=on_bad_frame)
        self.factory = None
        self._out: list[bytes] = []  # actions serialized this loop turn, written at its end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.last_rx = time.monotonic()
        self.factory = _Factory()

    def send(self, data: actions.Action, as_list: bool = False) -> asyncio.Future[Any]:
        data.as_list = as_list
        self.responses[data.id] = data
        if data.action_id:
            self.responses[data.action_id] = data
        fields = []
        for k, v in data.items():
            if k.lower() == "action":
                continue
            for item in v if isinstance(v, list | tuple) else [v]:
                fields.append((k, str(item)))
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(serialize_action(data["Action"], fields))
        fut: asyncio.Future[Any] = data.future
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.closed:
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        if self._tap is not None:
            self._tap(data)
        responses = self.responses
        for frame in self.parser.feed(data):
            if self.version is None and self.parser.banner:
                self.version = self.parser.banner.partition("/")[2]
            # A panoramisk Message only for frames that answer one of our actions:
            # most traffic is events, and building Messages for them doubled the cost.
            aid = frame.get("ActionID")
            response = responses.get(aid) if aid is not None else None
            if response is not None and _add(response, frame_to_message(frame)):
                responses.pop(response.id, None)
                if response.action_id:
                    responses.pop(response.action_id, None)
            # Every event also goes to the client (list events included: they carry
            # state, e.g. QueueMember). Only bookkeeping there, never user code.
            if frame.get("Event") is not None:
                self._on_event(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        self._on_lost(exc)

    def close(self) -> None:
        for action in {id(a): a for a in self.responses.values()}.values():
            if not action.future.done():
                action.future.set_exception(LinkLost(f"AMI link lost with {action['Action']} in flight"))
        self.responses.clear()
        if not self.closed:
            self.closed = True
            self.transport.close()


def _add(action: actions.Action, message: Message) -> bool:
    """Record ``message`` for ``action``; True when the action is complete.

    panoramisk's ``Action.multi`` guesses from the reply's text whether more
    messages follow ("added ... to queue" counts as a list: QueueAdd hung), and a
    list action answered with an Error (Asterisk 22: PJSIPShowContacts with no
    contacts) never completes. Here every action states its shape (``as_list``):
    - single: the first message completes it;
    - list: an error reply completes it; otherwise the event that ends the list
      (``EventList: Complete`` / ``...Complete``), or ``OriginateResponse``.
    """
    action.responses.append(message)
    fut = action.future
    if fut.done():
        return True
    if not action.as_list:
        fut.set_result(message)
        return True
    first = action.responses[0]
    if len(action.responses) == 1 and first.get("Response", "").lower() in ("error", "failure", "fail"):
        fut.set_result([first])
        return True
    ev = message.get("Event", "")
    if ev.endswith("Complete") or message.get("EventList", "").lower() == "complete" or ev == "OriginateResponse":
        fut.set_result(list(action.responses))
        return True
    return False


class _Factory:
    """What panoramisk's AMIProtocol expects of its manager; we route nothing through it."""

    forgetable_actions = ("ping", "login")
    awaiting_actions: tuple[Any, ...] = ()

    def dispatch(self, message: Message) -> None:  # pragma: no cover - handle_message is ours
        pass

    def connection_lost(self, exc: Exception | None) -> None:  # pragma: no cover
        pass
