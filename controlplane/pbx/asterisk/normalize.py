"""AMI events -> normalized :class:`PbxEvent`. Pure. Field names from Asterisk 22 on the wire
(tests/fixtures/ami/*) and ``ami_spec.json``."""

from __future__ import annotations

from controlplane.pbx.base import Contact, EventKind, PbxEvent, QueueMember
from controlplane.protocols.frame import Frame

_REGISTERED = {"created", "reachable", "nonqualified", "updated", "unqualified"}
_UNREGISTERED = {"removed", "unreachable"}


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes")


def member_from(frame: Frame) -> QueueMember:
    """QueueMember (QueueStatus list: Location/Name) or QueueMember* events (Interface/MemberName)."""
    iface = frame.get("Interface") or frame.get("Location") or ""
    return QueueMember(
        queue=frame.get("Queue", "") or "",
        interface=iface,
        name=frame.get("MemberName") or frame.get("Name") or "",
        penalty=int(frame.get("Penalty", "0") or 0),
        paused=_truthy(frame.get("Paused")),
        status=frame.get("Status", "") or "",
    )


def contact_from(frame: Frame) -> Contact:
    return Contact(endpoint=frame.get("Endpoint") or frame.get("Aor") or "",
                   uri=frame.get("Uri") or frame.get("URI") or "", status=frame.get("Status", "") or "")


def normalize(site: str, frame: Frame, at: float) -> PbxEvent | None:
    ev = (frame.get("Event") or "").lower()
    if ev == "contactstatus":
        st = (frame.get("ContactStatus") or "").lower()
        data = {"endpoint": frame.get("EndpointName") or frame.get("AOR") or "", "aor": frame.get("AOR") or "",
                "uri": frame.get("URI") or "", "status": frame.get("ContactStatus") or ""}
        if st in _REGISTERED:
            return PbxEvent(EventKind.PHONE_REGISTERED, site, at, data, frame)
        if st in _UNREGISTERED:
            return PbxEvent(EventKind.PHONE_UNREGISTERED, site, at, data, frame)
        return None
    kind = {
        "queuememberadded": EventKind.QUEUE_MEMBER_ADDED,
        "queuememberremoved": EventKind.QUEUE_MEMBER_REMOVED,
        "queuememberpause": EventKind.QUEUE_MEMBER_PAUSED,  # Asterisk 13+
        "queuememberpaused": EventKind.QUEUE_MEMBER_PAUSED,  # Asterisk 11 (tests__fixtures__agent_not_in_pause.yaml)
        "queuememberstatus": EventKind.QUEUE_MEMBER_STATUS,
    }.get(ev)
    if kind is not None:
        m = member_from(frame)
        return PbxEvent(kind, site, at, {"queue": m.queue, "interface": m.interface, "name": m.name,
                                         "penalty": m.penalty, "paused": m.paused, "status": m.status}, frame)
    if ev == "registry":
        return PbxEvent(EventKind.TRUNK_REGISTRATION, site, at,
                        {"trunk": frame.get("Username") or "", "domain": frame.get("Domain") or "",
                         "status": frame.get("Status") or "", "cause": frame.get("Cause") or ""}, frame)
    if ev == "devicestatechange":
        return PbxEvent(EventKind.DEVICE_STATE, site, at,
                        {"device": frame.get("Device") or "", "state": frame.get("State") or ""}, frame)
    return None
