"""Pure protocol parsers (AMI, ESL): bytes in, frames out. No I/O, no asyncio."""

from controlplane.protocols.frame import Frame

__all__ = ["Frame"]
