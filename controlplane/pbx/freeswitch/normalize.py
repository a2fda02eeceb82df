"""FreeSWITCH events -> ccdr's normalized :class:`PbxEvent` kinds.

Header names come from FreeSWITCH's sources as listed in
``/work/shared/traces/esl_custom_events_spec.json`` (no public capture exists):
``sofia::register`` / ``sofia::unregister`` / ``sofia::expire`` carry ``profile-name``,
``username``/``from-user``, ``from-host``, ``contact``; ``callcenter::info`` carries
``CC-Action`` with ``CC-Agent``, ``CC-Agent-Status``, ``CC-Agent-State``.

Mapping (agent name = ccdr's queue member "interface"):
``agent-add`` -> QUEUE_MEMBER_ADDED; ``agent-status-change`` -> QUEUE_MEMBER_PAUSED
(paused = status "On Break"); ``agent-state-change`` -> QUEUE_MEMBER_STATUS.
mod_callcenter emits no event for tier add/del, so QUEUE_MEMBER_REMOVED is never
produced from events; callers re-read ``callcenter_config tier list`` instead.
"""

from __future__ import annotations

from controlplane.pbx.base import EventKind, PbxEvent
from controlplane.protocols.frame import Frame

_SOFIA = {
    "sofia::register": EventKind.PHONE_REGISTERED,
    "sofia::unregister": EventKind.PHONE_UNREGISTERED,
    "sofia::expire": EventKind.PHONE_UNREGISTERED,
}
_CC = {
    "agent-add": EventKind.QUEUE_MEMBER_ADDED,
    "agent-status-change": EventKind.QUEUE_MEMBER_PAUSED,
    "agent-state-change": EventKind.QUEUE_MEMBER_STATUS,
}


def normalize(event: Frame, site: str, at: float) -> PbxEvent | None:
    """The normalized event for a decoded ESL event, or None if ccdr ignores it."""
    if (event.get("Event-Name") or "").upper() != "CUSTOM":
        return None
    sub = (event.get("Event-Subclass") or "").lower()
    kind = _SOFIA.get(sub)
    if kind is not None:
        user = event.get("username") or event.get("from-user") or ""
        host = event.get("from-host") or event.get("realm") or ""
        reg: dict[str, object] = {
            "endpoint": f"{user}@{host}" if host else user,
            "contact": event.get("contact") or "",
            "profile": event.get("profile-name") or "",
            "reason": sub.split("::", 1)[1],
        }
        return PbxEvent(kind, site, at, reg, event)
    if sub == "callcenter::info":
        action = (event.get("CC-Action") or "").lower()
        cc_kind = _CC.get(action)
        if cc_kind is None:
            return None
        agent = event.get("CC-Agent") or ""
        data: dict[str, object] = {"interface": agent, "action": action}
        if cc_kind is EventKind.QUEUE_MEMBER_PAUSED:
            status = event.get("CC-Agent-Status") or ""
            data["status"] = status
            data["paused"] = status.lower() == "on break"
        elif cc_kind is EventKind.QUEUE_MEMBER_STATUS:
            data["status"] = event.get("CC-Agent-State") or ""
        return PbxEvent(cc_kind, site, at, data, event)
    return None
