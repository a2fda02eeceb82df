"""Errors of phone provisioning.

One class, under :class:`controlplane.errors.CcdrError` so the CLI's one ``except``
catches it too.  Messages name the phone (its MAC) and the field, never a value:
the value may be a SIP password.
"""

from __future__ import annotations

from controlplane.errors import CcdrError


class ProvisioningError(CcdrError):
    """A phone's configuration cannot be rendered or served as asked."""
