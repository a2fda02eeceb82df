"""ccdr: an active-active disaster-recovery control plane for Asterisk and FreeSWITCH."""

__version__ = "0.1.0"
