"""PBX adapters: one async interface, an Asterisk (AMI) and a FreeSWITCH (ESL) implementation."""

from controlplane.pbx.base import (
    Contact,
    EventKind,
    LinkState,
    PbxClient,
    PbxEvent,
    QueueMember,
    Subscription,
)

__all__ = ["Contact", "EventKind", "LinkState", "PbxClient", "PbxEvent", "QueueMember", "Subscription"]
