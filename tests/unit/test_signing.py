"""Signing key files and the algorithms that public keys may verify."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from jwtfs.crypto.signing import (
    generate_signing_key,
    load_private_pem,
    load_public_key,
    public_key_algorithms,
)
from jwtfs.errors import ConfigError

KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
EXPECTED = {
    "ed25519": ("EdDSA",),
    "p256": ("ES256",),
    "rsa2048": ("RS256", "PS256"),
}
KEY_TYPES = {
    "ed25519": ed25519.Ed25519PublicKey,
    "p256": ec.EllipticCurvePublicKey,
    "rsa2048": rsa.RSAPublicKey,
}
ENCODINGS = ["pem", "der", "openssh"]


@pytest.fixture
def wide_umask() -> Iterator[None]:
    old = os.umask(0o277)
    yield
    os.umask(old)


def private_copy(tmp_path: Path, name: str) -> Path:
    """Copy a fixture private key to a 0600 file, as git keeps no modes."""
    path = tmp_path / name
    shutil.copyfile(KEYS / name, path)
    path.chmod(0o600)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def public_raw(key: object) -> bytes:
    assert isinstance(
        key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    )
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", list(EXPECTED))
def test_algorithms_follow_the_key_type(name: str, encoding: str) -> None:
    data = (KEYS / f"{name}.public.{encoding}").read_bytes()
    assert public_key_algorithms(data) == EXPECTED[name]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", list(EXPECTED))
def test_load_public_key_gives_the_fixture_key(name: str, encoding: str) -> None:
    key = load_public_key((KEYS / f"{name}.public.{encoding}").read_bytes())
    assert isinstance(key, KEY_TYPES[name])
    assert public_raw(key) == (KEYS / f"{name}.public.der").read_bytes()


def test_pem_with_leading_whitespace() -> None:
    data = b"\n  " + (KEYS / "ed25519.public.pem").read_bytes()
    assert public_key_algorithms(data) == ("EdDSA",)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("p384", "EC keys on curve secp384r1 are not supported; use P-256"),
        ("rsa1024", "an RSA key of 1024 bits is too short; use at least 2048 bits"),
        (
            "x25519",
            "X25519PublicKey keys are not supported; use Ed25519, EC P-256 or RSA",
        ),
    ],
)
def test_unsupported_public_keys(name: str, message: str) -> None:
    data = (KEYS / f"{name}.public.pem").read_bytes()
    for parse in (public_key_algorithms, load_public_key):
        with pytest.raises(ConfigError) as info:
            parse(data)
        assert str(info.value) == message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"ssh-ed25519 AAAAnotbase64",
        (KEYS / "ed25519.private.pem").read_bytes(),
        (KEYS / "p256.private.der").read_bytes(),
    ],
    ids=["empty", "text", "bad-pem", "bad-openssh", "private-pem", "private-der"],
)
def test_not_a_public_key(data: bytes) -> None:
    with pytest.raises(ConfigError) as info:
        public_key_algorithms(data)
    assert str(info.value) == "not a PEM, DER or OpenSSH public key"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_load_private_pem_returns_the_file(tmp_path: Path, name: str) -> None:
    path = private_copy(tmp_path, f"{name}.private.pem")
    assert load_private_pem(path) == (KEYS / f"{name}.private.pem").read_bytes()


def test_load_private_pem_refuses_0644(tmp_path: Path) -> None:
    path = private_copy(tmp_path, "ed25519.private.pem")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_private_pem(path)
    assert str(info.value) == (
        f"{path}: mode 0644 lets other users read the signing key; run chmod 600 {path}"
    )


def test_load_private_pem_refuses_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    with pytest.raises(ConfigError) as info:
        load_private_pem(path)
    assert str(info.value) == f"{path}: no signing key here; run 'jwtfs init'"


def test_load_private_pem_refuses_an_encrypted_key(tmp_path: Path) -> None:
    path = private_copy(tmp_path, "ed25519.private-encrypted.pem")
    with pytest.raises(ConfigError) as info:
        load_private_pem(path)
    assert str(info.value) == (
        f"{path}: the signing key is encrypted; store it without a passphrase "
        "and protect it by its mode 600"
    )


@pytest.mark.parametrize(
    "name", ["ed25519.private.der", "ed25519.private.openssh", "ed25519.public.pem"]
)
def test_load_private_pem_refuses_other_encodings(tmp_path: Path, name: str) -> None:
    path = private_copy(tmp_path, name)
    with pytest.raises(ConfigError) as info:
        load_private_pem(path)
    assert str(info.value) == f"{path}: not a PEM private key"


def test_generate_signing_key(tmp_path: Path, wide_umask: None) -> None:
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    generate_signing_key(private, public)
    assert (mode_of(private), mode_of(public)) == (0o600, 0o644)

    pem = load_private_pem(private)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert public_key_algorithms(public.read_bytes()) == ("EdDSA",)

    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    signature = key.sign(b"claims")
    verifier = load_public_key(public.read_bytes())
    assert isinstance(verifier, ed25519.Ed25519PublicKey)
    verifier.verify(signature, b"claims")


def test_generate_signing_key_twice_gives_new_keys(tmp_path: Path) -> None:
    generate_signing_key(tmp_path / "a.key", tmp_path / "a.pub")
    generate_signing_key(tmp_path / "b.key", tmp_path / "b.pub")
    assert (tmp_path / "a.key").read_bytes() != (tmp_path / "b.key").read_bytes()


def test_generate_refuses_an_existing_private_key(tmp_path: Path) -> None:
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    private.write_bytes(b"old")
    with pytest.raises(ConfigError) as info:
        generate_signing_key(private, public)
    assert str(info.value) == (
        f"{private}: a signing key already exists; move it away first if you "
        "really mean to replace it"
    )
    assert private.read_bytes() == b"old"
    assert not public.exists()


def test_generate_refuses_an_existing_public_key(tmp_path: Path) -> None:
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    public.write_bytes(b"old")
    with pytest.raises(ConfigError) as info:
        generate_signing_key(private, public)
    assert str(info.value) == (
        f"{public}: a public key already exists; move it away first if you "
        "really mean to replace it"
    )
    assert public.read_bytes() == b"old"
    assert not private.exists()


def test_generate_removes_the_private_key_if_the_public_one_fails(
    tmp_path: Path,
) -> None:
    private = tmp_path / "signing.key"
    public = tmp_path / "missing-dir" / "signing.pub"
    with pytest.raises(ConfigError, match="cannot create the public key"):
        generate_signing_key(private, public)
    assert not private.exists()
