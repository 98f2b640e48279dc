"""No log line carries a token, a key or plaintext.

One vault lives through what a day of use logs: a verbose mount with tokens
from the file and the environment, files written with unique markers in
their content and in an xattr, reads, a token file that turns expired,
forged and garbage tokens, refusals, a token back, commands around it
(``token inspect``, ``status``, ``index``, ``fsck``), and a mount with no
valid token. Then the daemon's log and every command's stderr (and the
stdout of the commands that do not print tokens by design) are scanned for
any 20-character piece of each token, of the master key (raw, hex, base64),
of the signing key's PEM body, and of each marker.
"""

from __future__ import annotations

import base64
import errno
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from jwtfs.auth.issuing import issue_token
from tests.conftest import needs_fuse
from tests.harness import VaultHarness

pytestmark = needs_fuse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
WINDOW = 20
MIB = 1024 * 1024
# The token file is re-read within a second; a loaded machine gets more.
RELOAD_SECONDS = 10.0


def windows(secret: str | bytes) -> set[str | bytes]:
    """Every ``WINDOW``-long piece of ``secret`` (all of it when shorter)."""
    if len(secret) <= WINDOW:
        return {secret}
    return {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}


def pem_body(path: Path) -> str:
    lines = path.read_text().strip().splitlines()
    return "".join(line for line in lines if not line.startswith("-----"))


def wait_for_errno(path: Path, expected: int | None) -> int | None:
    """Read ``path`` until it fails with ``expected`` (None: until it reads)."""
    deadline = time.monotonic() + RELOAD_SECONDS
    while True:
        try:
            path.read_bytes()
            got: int | None = None
        except OSError as err:
            got = err.errno
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


class Session:
    """The vault and everything its commands printed."""

    def __init__(self, harness: VaultHarness) -> None:
        self.harness = harness
        self.output: list[str] = []

    def cli(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = self.harness.jwtfs(*args, check=False, input=input, env=env)
        self.output += [result.stderr, result.stdout]
        return result


def minted(harness: VaultHarness) -> dict[str, str]:
    """The tokens of the session: valid, out of scope, expired, forged, garbage,
    and junk that is not even shaped like a JWT."""
    audience = next(
        line.split('"')[1]
        for line in (harness.config_dir / "config.toml").read_text().splitlines()
        if line.startswith("audience")
    )
    own_key = (harness.config_dir / "signing.key").read_bytes()
    other_key = (FIXTURES / "ed25519.private.pem").read_bytes()

    def sign(key: bytes, sub: str, now: float | None = None) -> str:
        return issue_token(
            key,
            audience=audience,
            read=("/**",),
            write=(),
            ttl_seconds=600,
            sub=sub,
            issuer=None,
            now=now,
        )

    return {
        "valid": harness.issue(read=("/**",), write=("/**",), sub="hygiene-writer"),
        "scoped": harness.issue(read=("/elsewhere/**",), sub="hygiene-scoped"),
        "expired": sign(own_key, "hygiene-expired", now=time.time() - 7200),
        "forged": sign(other_key, "hygiene-forged"),
        "garbage": ".".join("eyJ" + secrets.token_urlsafe(n) for n in (30, 60, 40)),
        "junk": "not a token " + secrets.token_urlsafe(40),
    }


def write_marked_files(mnt: Path, markers: list[str]) -> dict[Path, bytes]:
    big = bytearray(os.urandom(3 * MIB))
    for i, marker in enumerate(markers[2:5]):
        # Across a segment boundary (64 KiB), at a chunk boundary, at the end.
        at = (65536 - 10, 262144, len(big) - len(marker))[i]
        big[at : at + len(marker)] = marker.encode()
    (mnt / "docs").mkdir()
    files = {
        mnt / "note.txt": f"first line\n{markers[0]}\nlast line\n".encode(),
        mnt / "docs" / "report.txt": (markers[1] + "\n").encode() * 50,
        mnt / "docs" / "big.bin": bytes(big),
    }
    for path, content in files.items():
        path.write_bytes(content)
    os.setxattr(mnt / "note.txt", "user.note", markers[5].encode())
    return files


def test_no_token_key_or_plaintext_in_any_log(fresh_vault: VaultHarness) -> None:
    harness = fresh_vault
    session = Session(harness)
    tokens = minted(harness)
    markers = [f"hygiene-marker-{i}-{secrets.token_hex(8)}" for i in range(6)]
    env = {"JWTFS_TOKEN": tokens["scoped"]}

    harness.set_token(tokens["valid"])
    mount = ("mount", str(harness.mnt), "--token-file", str(harness.token_file))
    assert session.cli(*mount, "--verbose", env=env).returncode == 0
    files = write_marked_files(harness.mnt, markers)
    for path, content in files.items():
        assert path.read_bytes() == content
    assert os.getxattr(harness.mnt / "note.txt", "user.note") == markers[5].encode()

    harness.set_token("\n".join(tokens[k] for k in ("expired", "forged", "garbage")))
    note = harness.mnt / "note.txt"
    assert wait_for_errno(note, errno.EACCES) == errno.EACCES
    for path in files:
        with pytest.raises(PermissionError):
            path.read_bytes()
    with pytest.raises(PermissionError):
        (harness.mnt / "docs" / "new.txt").write_text(markers[0])
    with pytest.raises(PermissionError):
        os.listdir(harness.mnt / "docs")

    harness.set_token(tokens["valid"])
    assert wait_for_errno(note, None) is None
    assert note.read_bytes() == files[note]
    for name, token in tokens.items():
        result = session.cli("token", "inspect", input=token + "\n")
        assert result.returncode == (0 if name in ("valid", "scoped") else 1), name
    assert session.cli("status").returncode == 0
    assert session.cli("index").returncode == 0
    assert session.cli("umount", str(harness.mnt)).returncode == 0
    assert session.cli("fsck").returncode == 0

    harness.set_token(tokens["junk"])
    assert session.cli(*mount, env=env).returncode == 2
    harness.set_token(tokens["expired"])
    assert session.cli(*mount, env=env).returncode == 0
    with pytest.raises(PermissionError):
        note.read_bytes()
    assert session.cli("umount", str(harness.mnt)).returncode == 0

    log = (harness.data_dir / "mount.log").read_bytes()
    text = log.decode(errors="replace") + "\n".join(session.output)
    # The scan looks at a log that recorded the session, refusals included.
    assert "access denied: lookup /note.txt (token sub=hygiene-scoped" in text
    assert "sub=hygiene-expired" in text and "expired at" in text
    assert "bad signature" in text
    assert "sub=hygiene-writer" in text
    master = (harness.config_dir / "master.key").read_bytes()
    assert len(master) == 32
    secrets_shown = {
        **{f"token {name}": token for name, token in tokens.items()},
        "master key (hex)": master.hex(),
        "master key (HEX)": master.hex().upper(),
        "master key (base64)": base64.b64encode(master).decode(),
        "master key (base64url)": base64.urlsafe_b64encode(master).decode(),
        "signing key PEM": pem_body(harness.config_dir / "signing.key"),
        **{f"marker {i}": marker for i, marker in enumerate(markers)},
    }
    leaks = [
        f"{name}: {piece!r}"
        for name, secret in secrets_shown.items()
        for piece in windows(secret)
        if isinstance(piece, str) and piece in text
    ]
    raw = log + "\n".join(session.output).encode()
    leaks += [
        f"master key (raw): {piece!r}"
        for piece in windows(master)
        if isinstance(piece, bytes) and piece in raw
    ]
    assert leaks == []
