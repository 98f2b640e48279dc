"""Token verification.

A token is a compact JWS whose claims must hold ``exp`` and ``aud``; ``nbf``
and ``iat`` are honoured when present, with ``AuthConfig.leeway`` seconds of
leeway; ``iss`` is checked when ``AuthConfig.issuers`` is non-empty; a ``jti``
listed in the revocation file is refused. ``scope`` (see ``scope``) says what
the token grants.

How the checks are split, and why:

* Before anything is parsed, a token over 16 KiB or not of the compact shape
  is refused. The header is then checked here: ``alg`` must be present and
  never ``none`` in any casing, ``crit`` and ``b64`` are refused, ``kid``
  only selects a key from a dict. ``jku``, ``x5u`` and ``jwk`` are ignored:
  keys come from the config and nowhere else.
* The algorithms allowed for a key follow from its type alone (see
  ``keyset``). ``jwt.decode`` gets the key object and the one algorithm of
  that key the header names, so a token cannot choose how a key is
  interpreted.
* ``jwt.decode`` verifies the signature, the presence of ``exp`` and ``aud``,
  the audience (equal to, or in a list, one element equal to the configured
  string) and the issuer, with ``_DECODE_OPTIONS``. The time claims are
  checked here instead, against the injectable clock and strictly typed:
  ``jwt`` reads ``datetime.now()`` and accepts ``"exp": "9999999999"``.

Every ``jwt`` exception becomes the matching ``AuthError`` subclass, chained.
A token is never logged; its ``fingerprint`` (12 hex digits of its SHA-256)
is what logs and reports name it by.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from jwt.types import Options

from jwtfs.auth.keyset import KeySet, load_revocations
from jwtfs.auth.scope import Grants, parse_scope
from jwtfs.config import AuthConfig
from jwtfs.errors import (
    AuthError,
    TokenClaimError,
    TokenExpiredError,
    TokenMalformedError,
    TokenNotYetValidError,
    TokenRevokedError,
    TokenSignatureError,
)

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 16 * 1024
"""Longer tokens are refused before parsing; one with ten grants takes 600 bytes."""

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "require": ["exp", "aud"],
    "verify_aud": True,
    "strict_aud": False,
    "verify_iss": True,
    "verify_sub": True,
    "verify_jti": True,
    # Checked by _check_times against the injected clock; see the docstring.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "enforce_minimum_key_length": True,
}


@dataclass(frozen=True)
class VerifiedToken:
    """What a token that passed every check grants, and how to name it.

    ``fingerprint`` is the first 12 hex digits of the SHA-256 of the raw
    token: safe to log, enough to tell tokens apart.
    """

    sub: str | None
    jti: str | None
    exp: float
    grants: Grants
    fingerprint: str
    rejected_scopes: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one token, as a token source needs it.

    ``sub`` is set only when the signature verified. ``valid_from`` is set for
    a well-signed token that is not valid yet: the first time it will be.
    """

    fingerprint: str
    token: VerifiedToken | None
    error: AuthError | None
    sub: str | None = None
    valid_from: float | None = None


@dataclass(frozen=True)
class _Times:
    exp: float
    nbf: float | None
    iat: float | None


class Verifier:
    """Checks tokens against the keys, audience, issuers and revocations.

    ``keys`` defaults to ``KeySet.from_config(cfg)``; ``reload_keys`` always
    reads them from ``cfg``. ``clock`` gives the time the claims are checked
    against.

    Raises:
        ConfigError: a key file or the revocation file cannot be used.
    """

    def __init__(
        self,
        cfg: AuthConfig,
        keys: KeySet | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self.clock = clock
        self._keys = keys if keys is not None else KeySet.from_config(cfg)
        self._revoked = load_revocations(cfg.revocation_file)
        self._issuers = list(cfg.issuers) or None
        self.generation = 0
        """Counts key reloads, so token sources know to check their tokens again."""

    @property
    def leeway(self) -> int:
        """Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``."""
        return self._cfg.leeway

    @property
    def keys(self) -> KeySet:
        return self._keys

    @property
    def watched_files(self) -> tuple[Path, ...]:
        """The files ``reload_keys`` reads: keys, JWKS, HMAC secret, revocations."""
        cfg = self._cfg
        optional = (cfg.jwks_file, cfg.hmac_secret_file, cfg.revocation_file)
        return (*cfg.key_files, *(p for p in optional if p is not None))

    def reload_keys(self) -> None:
        """Read the key files, JWKS file and revocation file again.

        The new keys and revocations apply to every later check at once. On
        an error nothing changes.

        Raises:
            ConfigError: a file cannot be used; the message names it.
        """
        keys = KeySet.from_config(self._cfg)
        revoked = load_revocations(self._cfg.revocation_file)
        self._keys, self._revoked = keys, revoked
        self.generation += 1
        log.info("verification keys reloaded: %d keys", len(keys.keys))

    def verify(self, token: str) -> VerifiedToken:
        """Check ``token`` and return what it grants.

        Raises:
            TokenMalformedError: not a compact JWS, too long, or a bad header.
            TokenSignatureError: bad signature, algorithm or key id.
            TokenExpiredError: ``exp`` lies in the past beyond the leeway.
            TokenNotYetValidError: ``nbf`` or ``iat`` lies in the future.
            TokenClaimError: a claim is missing, mistyped or wrong.
            TokenRevokedError: the ``jti`` is in the revocation file.
        """
        verdict = self.check(token)
        if verdict.error is not None:
            raise verdict.error
        assert verdict.token is not None
        return verdict.token

    def check(self, token: str) -> Verdict:
        """Check ``token`` like ``verify``, returning the error instead."""
        fingerprint = token_fingerprint(token)
        try:
            claims = self._verified_claims(token)
        except AuthError as err:
            return Verdict(fingerprint, None, err)
        sub = claims.get("sub")
        try:
            times = _read_times(claims)
        except AuthError as err:
            return Verdict(fingerprint, None, err, sub)
        try:
            verified = self._accept(claims, times, fingerprint)
        except TokenNotYetValidError as err:
            start = max(t for t in (times.nbf, times.iat) if t is not None)
            return Verdict(fingerprint, None, err, sub, start - self.leeway)
        except AuthError as err:
            return Verdict(fingerprint, None, err, sub)
        return Verdict(fingerprint, verified, None, sub)

    def _verified_claims(self, token: str) -> dict[str, Any]:
        header = read_header(token)
        alg: str = header["alg"]
        keys = [
            k for k in self._keys.candidates(header.get("kid")) if alg in k.algorithms
        ]
        if not keys:
            raise TokenSignatureError(
                f"algorithm {_show(alg)} is not allowed for the configured keys"
            )
        failure: jwt.InvalidSignatureError | None = None
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.for_jwt(),
                    algorithms=[alg],
                    options=_DECODE_OPTIONS,
                    audience=self._cfg.audience,
                    issuer=self._issuers,
                )
            except jwt.InvalidSignatureError as err:
                failure = err
            except jwt.PyJWTError as err:
                raise self._translate(err) from err
            else:
                return claims
        raise TokenSignatureError("bad signature") from failure

    def _accept(self, claims: dict[str, Any], times: _Times, fp: str) -> VerifiedToken:
        jti = claims.get("jti")
        if jti is not None and jti in self._revoked:
            raise TokenRevokedError("revoked (its jti is in the revocation file)")
        _check_times(times, self.clock(), self.leeway)
        scope = claims.get("scope")
        if not isinstance(scope, str):
            what = "missing" if scope is None else "not a string"
            raise TokenClaimError(f"the scope claim is {what}")
        grants, rejected = parse_scope(scope)
        return VerifiedToken(
            sub=claims.get("sub"),
            jti=jti,
            exp=times.exp,
            grants=Grants(grants),
            fingerprint=fp,
            rejected_scopes=rejected,
        )

    def _translate(self, err: jwt.PyJWTError) -> AuthError:
        if isinstance(err, jwt.MissingRequiredClaimError):
            return TokenClaimError(f"the {err.claim} claim is missing")
        if isinstance(err, jwt.InvalidAudienceError):
            return TokenClaimError(
                f"wrong audience (this vault accepts {self._cfg.audience!r})"
            )
        if isinstance(err, jwt.InvalidIssuerError):
            return TokenClaimError("issuer not accepted")
        if isinstance(err, jwt.InvalidAlgorithmError | jwt.InvalidKeyError):
            return TokenSignatureError("algorithm or key not allowed")
        if isinstance(err, jwt.DecodeError):
            return TokenMalformedError(f"unreadable payload or signature ({err})")
        if isinstance(err, jwt.InvalidTokenError):
            # InvalidSubjectError and InvalidJTIError, which jwt does not export.
            return TokenClaimError(f"bad claim: {err}")
        return TokenMalformedError("unreadable token")


def read_header(token: str) -> dict[str, Any]:
    """Return the JOSE header of ``token`` after the checks made on every token.

    Raises:
        TokenMalformedError: too long, not compact JWS, or a header that is
            unreadable, names no algorithm or holds ``crit`` or ``b64``.
        TokenSignatureError: the algorithm is ``none`` in any casing.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenMalformedError(f"longer than {MAX_TOKEN_BYTES // 1024} KiB")
    if not is_compact_jws(token):
        raise TokenMalformedError(
            "not a compact JWS (three base64url parts separated by '.')"
        )
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as err:
        raise TokenMalformedError("the header is not a JSON object") from err
    except jwt.PyJWTError as err:
        raise TokenMalformedError(f"bad header: {err}") from err
    alg = header.get("alg")
    if alg is None:
        raise TokenMalformedError("the header names no algorithm (alg)")
    if not isinstance(alg, str):
        raise TokenMalformedError("the header's alg is not a string")
    if alg.lower() == "none":
        raise TokenSignatureError("unsigned tokens (alg none) are never accepted")
    if "crit" in header or "b64" in header:
        raise TokenMalformedError("critical header extensions are not supported")
    return header


def is_compact_jws(text: str) -> bool:
    """Whether ``text`` has the shape of a compact JWS (``a.b.c``, base64url)."""
    return _COMPACT_JWS.fullmatch(text) is not None


def token_fingerprint(token: str) -> str:
    """Return the first 12 hex digits of the SHA-256 of ``token``: safe to log."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _read_times(claims: dict[str, Any]) -> _Times:
    exp = _numeric_date(claims, "exp")
    assert exp is not None  # jwt.decode required it
    return _Times(exp, _numeric_date(claims, "nbf"), _numeric_date(claims, "iat"))


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """Return a NumericDate claim (RFC 7519 section 2): a JSON number."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenClaimError(f"the {name} claim is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise TokenClaimError(f"the {name} claim is out of range")
    return number


def _check_times(times: _Times, now: float, leeway: float) -> None:
    if now >= times.exp + leeway:
        raise TokenExpiredError(f"expired at {format_time(times.exp)}")
    if times.nbf is not None and times.nbf > now + leeway:
        raise TokenNotYetValidError(f"not valid before {format_time(times.nbf)}")
    if times.iat is not None and times.iat > now + leeway:
        raise TokenNotYetValidError(
            f"issued in the future, at {format_time(times.iat)}"
        )


def format_time(timestamp: float) -> str:
    """Return ``timestamp`` as an ISO 8601 UTC time, e.g. 2026-01-01T00:00:00Z."""
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:g} (out of range)"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _show(text: str) -> str:
    """Quote a header value for a message: escaped and short."""
    return ascii(text[:40])
