"""Token verification, issuing and inspection.

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
* The algorithms allowed for a key follow from its type alone (Ed25519 gives
  EdDSA, P-256 ES256, RSA RS256 and PS256; HS256 only from an HMAC secret
  file, which then is the only key). ``jwt.decode`` gets the key object and
  the one algorithm of that key the header names, so a token cannot choose
  how a key is interpreted.
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

import base64
import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import jwt
from jwt.types import Options

from jwtfs.auth.scope import (
    Grants,
    InvalidPatternError,
    format_pattern,
    parse_pattern,
    parse_scope,
)
from jwtfs.config import AuthConfig
from jwtfs.crypto.keys import check_private_file
from jwtfs.crypto.signing import PublicKey, load_public_key, public_key_algorithms
from jwtfs.errors import (
    AuthError,
    ConfigError,
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

# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash.
MIN_HMAC_SECRET_BYTES = 32

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

# RFC 7638 section 3.2: the members of each key type that a thumbprint covers.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
    "oct": ("k", "kty"),
}

# Algorithms by JWK key type and curve, as public_key_algorithms has them.
_JWK_ALGORITHMS = {
    ("OKP", "Ed25519"): ("EdDSA",),
    ("EC", "P-256"): ("ES256",),
    ("RSA", None): ("RS256", "PS256"),
}
_JWK_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_DURATION = re.compile(r"([0-9]{1,12})([smhdw]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class _Secret:
    """An HMAC secret whose repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "_Secret(<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an HMAC secret cannot be pickled")

    def reveal(self) -> bytes:
        return self._value


@dataclass(frozen=True)
class VerificationKey:
    """One configured key and the algorithms it may verify.

    ``fingerprint`` is the key's RFC 7638 JWK thumbprint (base64url), the same
    whichever file format the key came in.
    """

    source: str
    kid: str | None
    algorithms: tuple[str, ...]
    fingerprint: str
    material: PublicKey | _Secret = field(repr=False, compare=False)

    def for_jwt(self) -> PublicKey | bytes:
        """Return the key in the form ``jwt.decode`` takes."""
        material = self.material
        return material.reveal() if isinstance(material, _Secret) else material


class KeySet:
    """The verification keys of a vault, selectable by ``kid``.

    Raises:
        ConfigError: no keys, two keys share a kid, or HMAC is mixed in.
    """

    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        if not keys:
            raise ConfigError(
                "no token verification keys are configured; set auth.keys"
            )
        by_kid: dict[str, VerificationKey] = {}
        for key in keys:
            if key.kid is None:
                continue
            if key.kid in by_kid:
                raise ConfigError(f"{key.source}: key id {key.kid!r} is used twice")
            by_kid[key.kid] = key
        if len(keys) > 1 and any("HS256" in k.algorithms for k in keys):
            raise ConfigError("an HMAC secret must be the only verification key")
        self.keys = tuple(keys)
        self._by_kid = by_kid

    @classmethod
    def from_config(cls, cfg: AuthConfig) -> KeySet:
        """Load the key files, the JWKS file or the HMAC secret of ``cfg``.

        Raises:
            ConfigError: a file is missing, unreadable or holds an unsupported
                key; the message names the file.
        """
        if cfg.hmac_secret_file is not None:
            if cfg.key_files or cfg.jwks_file is not None:
                raise ConfigError(
                    f"{cfg.hmac_secret_file}: an HMAC secret cannot be combined "
                    "with public keys; use one kind of key"
                )
            return cls([_load_hmac_secret(cfg.hmac_secret_file)])
        keys = [_load_key_file(path) for path in cfg.key_files]
        if cfg.jwks_file is not None:
            keys.extend(_load_jwks(cfg.jwks_file))
        return cls(keys)

    def candidates(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """Return the keys to try for a token with header ``kid``.

        Raises:
            TokenSignatureError: the token names a kid that no key has, while
                some keys have kids.
        """
        if kid is None or not self._by_kid:
            return self.keys
        key = self._by_kid.get(kid)
        if key is None:
            raise TokenSignatureError("no configured key has the token's key id (kid)")
        return (key,)


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
        self._revoked = _load_revocations(cfg.revocation_file)
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
        revoked = _load_revocations(self._cfg.revocation_file)
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


def _thumbprint(alg: str, key: PublicKey | bytes) -> str:
    jwk = jwt.get_algorithm_by_name(alg).to_jwk(key, as_dict=True)
    members = {m: jwk[m] for m in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode())
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _read_config_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}; check auth in the config") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what}: {err.strerror}") from err


def _load_key_file(path: Path) -> VerificationKey:
    data = _read_config_file(path, "public key file")
    try:
        key = load_public_key(data)
        algorithms = public_key_algorithms(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return VerificationKey(
        str(path), None, algorithms, _thumbprint(algorithms[0], key), key
    )


def _load_hmac_secret(path: Path) -> VerificationKey:
    check_private_file(path, "HMAC secret")
    # A trailing newline, as an editor or echo leaves it, is not part of it.
    secret = _read_config_file(path, "HMAC secret").rstrip(b"\r\n")
    if len(secret) < MIN_HMAC_SECRET_BYTES:
        raise ConfigError(
            f"{path}: the HMAC secret has {len(secret)} bytes; use at least "
            f"{MIN_HMAC_SECRET_BYTES} random bytes"
        )
    try:
        jwt.encode({}, secret, algorithm="HS256")
    except jwt.InvalidKeyError as err:
        raise ConfigError(f"{path}: this is a key file, not an HMAC secret") from err
    fingerprint = _thumbprint("HS256", secret)
    return VerificationKey(str(path), None, ("HS256",), fingerprint, _Secret(secret))


def _load_jwks(path: Path) -> list[VerificationKey]:
    try:
        document = json.loads(_read_config_file(path, "JWKS file"))
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: not a JSON Web Key Set ({err})") from err
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(f'{path}: not a JSON Web Key Set (no "keys" list)')
    keys = []
    for number, jwk in enumerate(document["keys"], 1):
        if isinstance(jwk, dict) and jwk.get("use", "sig") != "sig":
            continue
        try:
            keys.append(_load_jwk(path, jwk))
        except ConfigError as err:
            raise ConfigError(f"{path}: key {number}: {err}") from err
    return keys


def _load_jwk(path: Path, jwk: Any) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise ConfigError("not a JSON object")
    kty, crv, kid = jwk.get("kty"), jwk.get("crv"), jwk.get("kid")
    algorithms = _JWK_ALGORITHMS.get((str(kty), None if kty == "RSA" else str(crv)))
    if algorithms is None:
        raise ConfigError(
            f"key type {kty!r} curve {crv!r} is not supported; "
            "use Ed25519, EC P-256 or RSA"
        )
    if _JWK_PRIVATE_MEMBERS & jwk.keys():
        raise ConfigError("holds private key material; publish only public keys")
    if kid is not None and not isinstance(kid, str):
        raise ConfigError("its kid is not a string")
    if "alg" in jwk:
        if jwk["alg"] not in algorithms:
            raise ConfigError(f"alg {jwk['alg']!r} does not fit a {kty} key")
        algorithms = (jwk["alg"],)
    try:
        key: PublicKey = jwt.PyJWK(jwk, algorithms[0]).key
    except jwt.PyJWTError as err:
        raise ConfigError(f"unusable key ({err})") from err
    too_short = jwt.get_algorithm_by_name(algorithms[0]).check_key_length(key)
    if too_short is not None:
        raise ConfigError(too_short)
    source = f"{path}#{kid}" if kid else str(path)
    return VerificationKey(
        source, kid, algorithms, _thumbprint(algorithms[0], key), key
    )


def _load_revocations(path: Path | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    try:
        text = _read_config_file(path, "revocation file").decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: the revocation file is not UTF-8 text") from err
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


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
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number with an optional unit "
            "s, m, h, d or w, e.g. 90s, 15m, 8h, 30d, 2w"
        )
    seconds = int(match[1]) * _DURATION_UNITS[match[2]]
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
