"""Verification keys: the key files, JWKS file or HMAC secret of the config.

``KeySet.from_config`` loads the keys ``AuthConfig`` names and no others; a
token's ``jku``, ``x5u`` or ``jwk`` header never adds one. Each key carries
the algorithms it may verify, which follow from its type alone: Ed25519 gives
EdDSA, P-256 ES256, RSA RS256 and PS256. A JWK's ``alg`` may narrow that to
one, never widen it. HS256 comes only from an HMAC secret file (mode 0600, at
least ``MIN_HMAC_SECRET_BYTES``), which then must be the only key. In a JWKS
file, keys whose ``use`` is not ``sig`` are skipped and a key holding private
members is refused.

A key is named by its RFC 7638 thumbprint, the same whichever format it came
in. An HMAC secret is held in ``_Secret``, whose repr is redacted and which
cannot be pickled.

``load_revocations`` reads the revocation file: one ``jti`` a line, blank lines
and lines starting with ``#`` ignored.

Every problem with a file is a ``ConfigError`` whose message names the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import jwt

from jwtfs.config import AuthConfig
from jwtfs.crypto.keys import check_private_file
from jwtfs.crypto.signing import PublicKey, load_public_key, public_key_algorithms
from jwtfs.errors import ConfigError, TokenSignatureError

# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash.
MIN_HMAC_SECRET_BYTES = 32

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


def load_revocations(path: Path | None) -> frozenset[str]:
    """Return the ``jti`` values listed in the revocation file at ``path``.

    No file configured (``None``) revokes nothing.

    Raises:
        ConfigError: the file is missing, unreadable or not UTF-8 text.
    """
    if path is None:
        return frozenset()
    try:
        text = _read_config_file(path, "revocation file").decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: the revocation file is not UTF-8 text") from err
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))
