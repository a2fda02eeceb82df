"""A minimal SIP/UDP user agent stack: message, digest, transport, ua, fleet."""
