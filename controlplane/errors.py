"""The one exception hierarchy of ccdr.

Every error ccdr raises on purpose derives from :class:`CcdrError`, so a caller
can catch that one class.  The tree::

    CcdrError
    ├── ConfigError            a settings/policy/inventory file is invalid
    ├── LabError               the native lab cannot do what was asked
    ├── ProtocolError          a malformed AMI/ESL frame (carries its offset)
    ├── PbxError               anything about talking to a PBX
    │   ├── PbxUnreachable     no answer (refused, timed out, frozen, cut)
    │   ├── PbxAuthError       the PBX refused our credentials: never retried silently
    │   ├── LinkLost           the link dropped while a command was in flight
    │   └── PbxCommandError    the PBX answered, with an error
    ├── InventoryError         inventory import/export refused
    ├── LoginRefused           a login/logout refused; carries a stable code and HTTP status
    ├── RenderError            a routing policy could not be rendered
    └── ProvisioningError      a phone's config cannot be rendered (in provisioning.errors)

Messages never contain secrets.
"""

from __future__ import annotations


class CcdrError(Exception):
    """Base of every error ccdr raises on purpose."""


class ConfigError(CcdrError):
    """A configuration file is invalid.

    ``problems`` holds every problem found, each as ``path: reason``, so a user
    fixes the whole file in one pass instead of one field per run.
    """

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class LabError(CcdrError):
    """The native lab cannot do what was asked; the message is one clear line."""


class ProtocolError(CcdrError):
    """A frame could not be parsed. ``offset`` is its byte offset in the stream."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{message}{where}")


class PbxError(CcdrError):
    """Anything about talking to a PBX."""


class PbxUnreachable(PbxError):
    """The PBX does not answer: connection refused, timed out, frozen or cut off."""


class PbxAuthError(PbxError):
    """The PBX refused our credentials. A distinct state, never a silent retry loop."""


class LinkLost(PbxError):
    """The link dropped while a command was in flight; the command was not re-sent."""


class PbxCommandError(PbxError):
    """The PBX answered the command with an error."""


class InventoryError(CcdrError):
    """An inventory import or export was refused; nothing was written.

    ``problems`` lists every problem as ``file:line: field: reason``.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message)


class LoginRefused(CcdrError):
    """A login service request refused. ``code`` is stable (clients branch on it)."""

    def __init__(self, code: str, status: int, message: str) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


class RenderError(CcdrError):
    """A routing policy could not be rendered."""
