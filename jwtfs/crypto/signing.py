"""Key files for signing and verifying tokens.

Only ``crypto`` imports ``cryptography``, so ``auth`` comes here to create a
signing key, to read the private key it signs with, and to turn the public keys
named in the config into key objects for ``jwt``, together with the JWS
algorithms each may verify. The algorithm list follows from the key type alone,
never from a token, so a token cannot pick a weaker algorithm or use a public
key as an HMAC secret.

Accepted public keys: Ed25519, EC P-256 and RSA of at least 2048 bits, in PEM
(SubjectPublicKeyInfo, or PKCS#1 for RSA), DER (SubjectPublicKeyInfo) or
OpenSSH (``ssh-ed25519 AAAA...``) encoding.

Messages of the ``ConfigError``\\s raised here describe the key but cannot name
its file, which the caller knows: prefix the path when passing them on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from jwtfs.crypto.keys import _read_private, _write_exclusive
from jwtfs.errors import ConfigError

PublicKey: TypeAlias = (
    ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
)
"""A public key object as ``jwt.decode`` takes it (a cryptography key).

Callers outside ``crypto`` treat it as opaque: they get it from
``load_public_key`` and hand it to ``jwt``.
"""

# Below 2048 bits an RSA modulus is within reach of a determined attacker
# (NIST SP 800-131A disallows it for signatures); such a key is refused.
MIN_RSA_BITS = 2048

_PEM_MARK = b"-----BEGIN"
_OPENSSH_PREFIXES = (b"ssh-", b"ecdsa-sha2-")


def generate_signing_key(private_path: Path, public_path: Path) -> None:
    """Create a new Ed25519 key pair: private PEM 0600, public PEM 0644.

    Both files are created exclusively; if the public one cannot be written,
    the private one just written is removed again.

    Raises:
        ConfigError: either file exists or cannot be written.
    """
    if public_path.exists():
        raise ConfigError(
            f"{public_path}: a public key already exists; move it away first "
            "if you really mean to replace it"
        )
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    _write_exclusive(private_path, private_pem, 0o600, "signing key")
    try:
        _write_exclusive(public_path, public_pem, 0o644, "public key")
    except ConfigError:
        private_path.unlink(missing_ok=True)
        raise


def load_private_pem(path: Path) -> bytes:
    """Read a PEM private signing key after checking its owner and mode.

    The key must be an unencrypted PEM private key of a type that
    ``public_key_algorithms`` accepts; the PEM bytes are returned as read.

    Raises:
        ConfigError: the file is missing, readable or writable by others, not
            owned by the current user, not an unencrypted PEM private key, or
            of an unsupported type. The message names the file.
    """
    pem = _read_private(path, "signing key", missing_fix="run 'jwtfs init'")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise ConfigError(
            f"{path}: the signing key is encrypted; store it without a passphrase "
            "and protect it by its mode 600"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a PEM private key") from exc
    try:
        _classify(key.public_key())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return pem


def load_public_key(data: bytes) -> PublicKey:
    """Parse a public key given as PEM, DER or an OpenSSH public key line.

    Raises:
        ConfigError: ``data`` is not a public key in any of these encodings,
            or is of an unsupported type or size.
    """
    key, _ = _classify(_parse_public(data))
    return key


def public_key_algorithms(pem_or_der: bytes) -> tuple[str, ...]:
    """Return the JWS algorithms the public key in ``pem_or_der`` may verify.

    Ed25519 gives ``("EdDSA",)``, EC P-256 ``("ES256",)``, RSA
    ``("RS256", "PS256")``. PEM, DER and OpenSSH encodings are accepted.

    Raises:
        ConfigError: not a public key, or of an unsupported type or size.
    """
    _, algorithms = _classify(_parse_public(pem_or_der))
    return algorithms


def _parse_public(data: bytes) -> object:
    head = data.lstrip()
    try:
        if head.startswith(_PEM_MARK):
            return serialization.load_pem_public_key(head)
        if head.startswith(_OPENSSH_PREFIXES):
            return serialization.load_ssh_public_key(head)
        return serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError("not a PEM, DER or OpenSSH public key") from exc


def _classify(key: object) -> tuple[PublicKey, tuple[str, ...]]:
    """Return ``key`` as a supported key type, with the algorithms it verifies."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, ("EdDSA",)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return key, ("ES256",)
        raise ConfigError(
            f"EC keys on curve {key.curve.name} are not supported; use P-256"
        )
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"an RSA key of {key.key_size} bits is too short; use at least "
                f"{MIN_RSA_BITS} bits"
            )
        return key, ("RS256", "PS256")
    raise ConfigError(
        f"{type(key).__name__.removeprefix('_')} keys are not supported; "
        "use Ed25519, EC P-256 or RSA"
    )
