"""The JWT cases of shared/cases/CASES.md, mount side.

Each hostile token is written to the token file of a running mount, after a
valid token has shown the file readable; the read of an in-scope file must then
fail with EACCES and return no plaintext. The token file is watched, so no
remount is needed; CASE-29's expiry is checked through the mount as well.
"""

from __future__ import annotations

import base64
import errno
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.harness import VaultHarness
from tests.security.test_token_cases import make

SECRET = b"in-scope plaintext 8f2c\n"
LEEWAY = 2


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultHarness]:
    harness = VaultHarness(tmp_path_factory.mktemp("tokens"))
    harness.init()
    config = harness.config_dir / "config.toml"
    config.write_text(config.read_text().replace("leeway = 30", f"leeway = {LEEWAY}"))
    harness.set_token(harness.issue(read=("/**",), write=("/**",)))
    harness.mount()
    (harness.mnt / "doc").write_bytes(SECRET)
    yield harness
    harness.cleanup()


def audience(h: VaultHarness) -> str:
    config = tomllib.loads((h.config_dir / "config.toml").read_text())
    return str(config["auth"]["audience"])


def good_claims(h: VaultHarness, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"aud": audience(h), "exp": now + 600, "iat": now, "scope": "read:/doc"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def read_outcome(path: Path) -> bytes | int:
    try:
        return path.read_bytes()
    except OSError as err:
        return err.errno


def wait_for(path: Path, expected: bytes | int, seconds: float = 3.0) -> bytes | int:
    deadline = time.monotonic() + seconds
    outcome = read_outcome(path)
    while outcome != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        outcome = read_outcome(path)
    return outcome


def assert_refused(h: VaultHarness, token: str) -> None:
    h.set_token(h.issue(read=("/doc",)))
    assert wait_for(h.mnt / "doc", SECRET) == SECRET
    h.set_token(token)
    assert wait_for(h.mnt / "doc", errno.EACCES) == errno.EACCES


def valid_signature(h: VaultHarness) -> bytes:
    return h.issue(read=("/doc",)).split(".")[2].encode()


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_case26_alg_none_refused_through_the_mount(
    mounted: VaultHarness, alg: str
) -> None:
    claims = good_claims(mounted)
    assert_refused(mounted, make({"alg": alg, "typ": "JWT"}, claims, sig=b""))
    forged = make({"alg": alg, "typ": "JWT"}, claims, sig=valid_signature(mounted))
    assert_refused(mounted, forged)


def test_case26_header_without_alg_refused_through_the_mount(
    mounted: VaultHarness,
) -> None:
    token = make({"typ": "JWT"}, good_claims(mounted), sig=valid_signature(mounted))
    assert_refused(mounted, token)


def _public_key_encodings(h: VaultHarness) -> list[bytes]:
    pem = (h.config_dir / "signing.pub").read_bytes()
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    der = base64.b64decode(body)
    raw = der[-32:]
    openssh_blob = (
        len(b"ssh-ed25519").to_bytes(4, "big")
        + b"ssh-ed25519"
        + (32).to_bytes(4, "big")
        + raw
    )
    openssh = b"ssh-ed25519 " + base64.b64encode(openssh_blob)
    return [pem, pem.strip(), der, openssh]


def test_case25_hs256_keyed_with_the_public_key_refused(mounted: VaultHarness) -> None:
    for secret in _public_key_encodings(mounted):
        token = make(
            {"alg": "HS256", "typ": "JWT"}, good_claims(mounted), secret=secret
        )
        assert_refused(mounted, token)


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": int(time.time()) - 3600},
        {"exp": None},
        {"nbf": int(time.time()) + 3600},
        {"exp": "9999999999"},
        {"aud": "jwtfs:someone-else"},
        {"iat": int(time.time()) + 3600},
        {"exp": int(time.time()) - LEEWAY - 5},
    ],
    ids=[
        "expired",
        "no-exp",
        "future-nbf",
        "exp-string",
        "wrong-aud",
        "future-iat",
        "exp-beyond-leeway",
    ],
)
def test_case29_30_bad_claims_refused_through_the_mount(
    mounted: VaultHarness, changes: dict[str, Any]
) -> None:
    key = (mounted.config_dir / "signing.key").read_bytes()
    token = jwt.encode(good_claims(mounted, **changes), key, algorithm="EdDSA")
    assert_refused(mounted, token)


def test_case29_control_a_properly_signed_token_reads(mounted: VaultHarness) -> None:
    key = (mounted.config_dir / "signing.key").read_bytes()
    now = int(time.time())
    token = jwt.encode(
        good_claims(mounted, iat=now + 1, nbf=now + 1), key, algorithm="EdDSA"
    )
    mounted.set_token(token)
    assert wait_for(mounted.mnt / "doc", SECRET) == SECRET


def test_case29_expiry_stops_reads_without_a_remount(mounted: VaultHarness) -> None:
    mounted.set_token(mounted.issue(read=("/doc",), ttl="2s"))
    assert wait_for(mounted.mnt / "doc", SECRET) == SECRET
    # exp is 2 s away and the leeway 2 s: refused within about 4 s, and a fresh
    # token in the file restores access at once.
    assert wait_for(mounted.mnt / "doc", errno.EACCES, seconds=8) == errno.EACCES
    mounted.set_token(mounted.issue(read=("/doc",)))
    assert wait_for(mounted.mnt / "doc", SECRET) == SECRET
