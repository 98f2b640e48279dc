"""Issuing tokens, and decoding them for display.

``issue_token`` signs an EdDSA token whose ``scope`` grants reading and writing
on path patterns; ``encode_pattern`` turns a path into such a pattern, and
``parse_duration`` reads a lifetime as ``jwtfs token issue --ttl`` takes it.
``inspect_token`` decodes a token without trusting it, for ``jwtfs token
inspect``, and asks a ``Verifier`` whether it is valid. A report names a token
by its fingerprint, never by the token itself.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from jwtfs import config
from jwtfs.auth.scope import (
    Grants,
    InvalidPatternError,
    format_pattern,
    parse_pattern,
    parse_scope,
)
from jwtfs.auth.tokens import MAX_TOKEN_BYTES, Verifier, format_time
from jwtfs.errors import ConfigError

# Narrower than config.parse_duration, which also takes upper-case units,
# Unicode digits and any number of them: ASCII, at most 12 digits.
_DURATION = re.compile(r"[0-9]{1,12}[smhdw]?")


def encode_pattern(path: str) -> str:
    """Percent-encode ``path`` for a scope item; ``*`` stays a wildcard.

    Characters that came from undecodable file-name bytes (surrogate escapes,
    as ``os.fsdecode`` makes them) become those bytes again.
    """
    return format_pattern(path.encode("utf-8", "surrogateescape"))


def issue_token(
    private_pem: bytes,
    *,
    audience: str,
    read: Sequence[str],
    write: Sequence[str],
    ttl_seconds: int,
    sub: str | None,
    issuer: str | None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a token (EdDSA) granting ``read`` and ``write`` on path patterns.

    The claims are ``aud``, ``iat``, ``nbf`` (equal to ``iat``), ``exp``, a
    random ``jti``, ``scope``, and ``sub`` and ``iss`` when given.

    Raises:
        ConfigError: a pattern is invalid, no pattern or a non-positive
            lifetime is given, the key is not an Ed25519 private key, or the
            token would be longer than ``MAX_TOKEN_BYTES``.
    """
    if ttl_seconds <= 0:
        raise ConfigError("the token lifetime must be positive")
    if not read and not write:
        raise ConfigError("grant at least one path to read or write")
    writable = dict.fromkeys(map(encode_pattern, write))
    readable = [
        p for p in dict.fromkeys(map(encode_pattern, read)) if p not in writable
    ]
    for pattern in (*readable, *writable):
        try:
            parse_pattern(pattern)
        except InvalidPatternError as err:
            raise ConfigError(f"{pattern}: {err}") from err
    items = [f"read:{p}" for p in readable] + [f"write:{p}" for p in writable]

    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": secrets.token_urlsafe(16),
        "scope": " ".join(items),
    }
    if sub is not None:
        claims["sub"] = sub
    if issuer is not None:
        claims["iss"] = issuer
    headers = {"typ": "JWT"} if kid is None else {"typ": "JWT", "kid": kid}
    try:
        token = jwt.encode(claims, private_pem, algorithm="EdDSA", headers=headers)
    except (jwt.InvalidKeyError, ValueError) as err:
        raise ConfigError("the signing key is not an Ed25519 private key") from err
    if len(token) > MAX_TOKEN_BYTES:
        raise ConfigError(
            f"too many paths: the token would exceed {MAX_TOKEN_BYTES} bytes"
        )
    return token


def parse_duration(text: str) -> int:
    """Return the seconds in ``text``: ``90s``, ``15m``, ``8h``, ``30d``, ``2w``
    or a plain number of seconds.

    Raises:
        ValueError: ``text`` is not such a duration, or is zero.
    """
    shape = _DURATION.fullmatch(text.strip())
    seconds = None if shape is None else config.parse_duration(shape[0])
    if seconds is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number with an optional unit "
            "s, m, h, d or w, e.g. 90s, 15m, 8h, 30d, 2w"
        )
    if seconds == 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return seconds


@dataclass(frozen=True)
class TokenReport:
    """A token's header and claims, decoded without verification, for display.

    ``valid`` and ``reason`` say whether the verifier accepts it. The claims
    and ``grants_in_words`` show what the token says whether or not it is
    valid; only a valid token's grants are in effect. Times are ISO 8601 UTC;
    a claim of the wrong type is shown as its JSON text.
    """

    fingerprint: str
    alg: str | None
    kid: str | None
    sub: str | None
    aud: tuple[str, ...]
    iss: str | None
    iat: str | None
    nbf: str | None
    exp: str | None
    jti: str | None
    scope: str | None
    valid: bool
    reason: str | None
    grants_in_words: list[str]
    rejected_scopes: tuple[str, ...]


def inspect_token(token: str, verifier: Verifier) -> TokenReport:
    """Decode ``token`` for display and say whether ``verifier`` accepts it."""
    verdict = verifier.check(token)
    header: dict[str, Any] = {}
    claims: dict[str, Any] = {}
    if len(token) <= MAX_TOKEN_BYTES:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            pass  # shown as far as it could be read; verdict has the reason
    scope = claims.get("scope")
    if verdict.token is not None:
        grants, rejected = verdict.token.grants, verdict.token.rejected_scopes
    elif isinstance(scope, str):
        parsed, rejected = parse_scope(scope)
        grants = Grants(parsed)
    else:
        grants, rejected = Grants.empty(), ()
    return TokenReport(
        fingerprint=verdict.fingerprint,
        alg=_text(header.get("alg")),
        kid=_text(header.get("kid")),
        sub=_text(claims.get("sub")),
        aud=_audiences(claims.get("aud")),
        iss=_text(claims.get("iss")),
        iat=_time_text(claims.get("iat")),
        nbf=_time_text(claims.get("nbf")),
        exp=_time_text(claims.get("exp")),
        jti=_text(claims.get("jti")),
        scope=_text(scope),
        valid=verdict.error is None,
        reason=None if verdict.error is None else str(verdict.error),
        grants_in_words=grants.describe(),
        rejected_scopes=rejected,
    )


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _audiences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(_text(v) or "" for v in values)


def _time_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return json.dumps(value)
    try:
        return format_time(float(value)) if math.isfinite(value) else json.dumps(value)
    except OverflowError:
        return json.dumps(value)
