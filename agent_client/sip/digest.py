"""HTTP digest authentication for SIP (RFC 2617, RFC 8760). Pure, no I/O.

MD5, SHA-256 and SHA-512-256; qop=auth with nc/cnonce, or no qop (RFC 2069 style).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from controlplane.errors import ProtocolError

from .tokens import token_hex

_ALGOS = {
    "MD5": "md5",
    "MD5-SESS": "md5",
    "SHA-256": "sha256",
    "SHA-256-SESS": "sha256",
    "SHA-512-256": "sha512_256",
    "SHA-512-256-SESS": "sha512_256",
}


def parse_challenge(value: str) -> dict[str, str]:
    """Parse ``Digest realm="x", nonce="y", qop="auth"`` into a dict (keys lower-case)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ProtocolError(f"unsupported auth scheme {scheme!r}: only Digest")
    out: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,\t":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            end = rest.find('"', i + 1)
            if end < 0:
                raise ProtocolError(f"digest challenge: unterminated quoted value for {key!r}")
            out[key] = rest[i + 1 : end]
            i = end + 1
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            out[key] = rest[i:end].strip()
            i = end
    if "nonce" not in out or "realm" not in out:
        raise ProtocolError("digest challenge lacks realm or nonce")
    return out


def _h(algo: str, s: str) -> str:
    return hashlib.new(algo, s.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DigestResponse:
    response: str
    header: str


def compute(
    *,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: int = 1,
    cnonce: str | None = None,
    opaque: str | None = None,
) -> DigestResponse:
    """Compute the digest and the ``Authorization`` header value (RFC 2617 §3.2.2)."""
    algo_name = algorithm.upper()
    if algo_name not in _ALGOS:
        raise ProtocolError(f"unsupported digest algorithm {algorithm!r}")
    hname = _ALGOS[algo_name]
    ha1 = _h(hname, f"{username}:{realm}:{password}")
    if cnonce is None:
        cnonce = token_hex(8)
    if algo_name.endswith("-SESS"):
        ha1 = _h(hname, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(hname, f"{method}:{uri}")
    ncs = f"{nc:08x}"
    if qop:
        resp = _h(hname, f"{ha1}:{nonce}:{ncs}:{cnonce}:{qop}:{ha2}")
    else:
        resp = _h(hname, f"{ha1}:{nonce}:{ha2}")
    parts = [
        f'username="{username}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
        f'response="{resp}"',
        f"algorithm={algorithm}",
    ]
    if qop:
        parts += [f"qop={qop}", f"nc={ncs}", f'cnonce="{cnonce}"']
    if opaque is not None:
        parts.append(f'opaque="{opaque}"')
    return DigestResponse(resp, "Digest " + ", ".join(parts))


def answer_challenge(challenge_value: str, *, username: str, password: str, method: str, uri: str, nc: int = 1) -> str:
    """Authorization header value answering a WWW-/Proxy-Authenticate challenge."""
    ch = parse_challenge(challenge_value)
    qop = None
    if "qop" in ch:
        offered = [q.strip().lower() for q in ch["qop"].split(",")]
        if "auth" not in offered:
            raise ProtocolError(f"digest challenge offers qop={ch['qop']!r}; only 'auth' is supported")
        qop = "auth"
    return compute(
        username=username,
        password=password,
        realm=ch["realm"],
        nonce=ch["nonce"],
        method=method,
        uri=uri,
        algorithm=ch.get("algorithm", "MD5"),
        qop=qop,
        nc=nc,
        opaque=ch.get("opaque"),
    ).header
