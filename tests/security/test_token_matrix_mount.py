"""The token attack matrix through a real mount: keys, revocations, token files.

The vault's config names a JWKS file (kids k1 and k2: the Ed25519 and P-256
fixture keys) besides its own ``signing.pub``, and a revocation file. Tests
change these files, and the token file, under a running mount and check that
the change counts within ``SETTLE`` seconds, without a remount, for new opens
and for handles already open.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import VaultHarness
from tests.security.forge import KEYS, jwk_of, private, sign

MiB = 1024 * 1024
SECRET = b"rotation plaintext 5d1e\n"
SETTLE = 2.0
"""Seconds a change to a key, revocation or token file may take to count."""
BOTH_KEYS = (("ed25519", "EdDSA", "k1"), ("p256", "ES256", "k2"))
"""The JWKS each test starts with: (fixture key, algorithm, kid) items."""


def read_outcome(path: Path) -> bytes | int:
    try:
        return path.read_bytes()
    except OSError as err:
        return err.errno or 0


def pread_outcome(fd: int) -> bytes | int:
    try:
        return os.pread(fd, 100, 0)
    except OSError as err:
        return err.errno or 0


def wait_for(
    probe: Callable[[], bytes | int], expected: bytes | int, seconds: float = 3.0
) -> bytes | int:
    deadline = time.monotonic() + seconds
    outcome = probe()
    while outcome != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        outcome = probe()
    return outcome


def vault_audience(h: VaultHarness) -> str:
    config = tomllib.loads((h.config_dir / "config.toml").read_text())
    return str(config["auth"]["audience"])


def claims(h: VaultHarness, **changes: Any) -> dict[str, Any]:
    """Claims for the vault of ``h``, each set with a ``sub`` of its own."""
    now = int(time.time())
    body: dict[str, Any] = {"aud": vault_audience(h), "exp": now + 600, "iat": now}
    body.update(sub=f"rot-{time.monotonic()}", scope="read:/doc")
    body.update(changes)
    return body


def mount_token(
    h: VaultHarness,
    key_pem: bytes,
    alg: str = "EdDSA",
    *,
    scope: str = "read:/doc",
    **header: Any,
) -> str:
    return sign(claims(h, scope=scope), key_pem, alg, **header)


def jwks_text(*keys: tuple[str, str, str]) -> str:
    """A JWKS of (fixture key, algorithm, kid) items."""
    jwks = [
        jwk_of((KEYS / f"{name}.public.pem").read_bytes(), alg, kid=kid)
        for name, alg, kid in keys
    ]
    return json.dumps({"keys": jwks})


def write_jwks(path: Path, *keys: tuple[str, str, str]) -> None:
    """Replace the JWKS file in one rename, as a deploy tool would."""
    staged = path.with_suffix(".new")
    staged.write_text(jwks_text(*keys))
    staged.replace(path)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultHarness]:
    """A vault whose config names keys.json (k1, k2) and revoked.txt too."""
    h = VaultHarness(tmp_path_factory.mktemp("matrix"))
    h.init()
    h.set_config("auth", "jwks", "keys.json")
    h.set_config("auth", "revocations", "revoked.txt")
    yield h
    h.cleanup()


@pytest.fixture
def unmounted(keyed: VaultHarness) -> VaultHarness:
    """The vault with both JWKS keys and nothing revoked, not mounted."""
    h = keyed
    write_jwks(h.config_dir / "keys.json", *BOTH_KEYS)
    (h.config_dir / "revoked.txt").write_text("# revoked token ids\n")
    return h


@pytest.fixture
def mounted(unmounted: VaultHarness) -> Iterator[VaultHarness]:
    """The vault mounted with a token for everything, /doc written.

    Fails the test on a WARNING or ERROR line it did not expect; a test that
    provokes one declares it with ``expect_warning``.
    """
    h = unmounted
    vault_key = (h.config_dir / "signing.key").read_bytes()
    h.set_token(mount_token(h, vault_key, scope="read:/** write:/**"))
    since = len(h.log_text().splitlines())
    h.mount()
    (h.mnt / "doc").write_bytes(SECRET)
    yield h
    h.umount()
    lines = h.log_text().splitlines()[since:]
    bad = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert bad == _expected_warnings.pop(h.root, [])


_expected_warnings: dict[Path, list[str]] = {}


def expect_warning(h: VaultHarness, line: str) -> None:
    _expected_warnings.setdefault(h.root, []).append(line)


def test_kid_selects_the_jwks_key_through_the_mount(mounted: VaultHarness) -> None:
    h, doc = mounted, mounted.mnt / "doc"
    vault_key = (h.config_dir / "signing.key").read_bytes()
    accepted = [
        mount_token(h, vault_key),
        mount_token(h, private("ed25519"), kid="k1"),
        mount_token(h, private("p256"), "ES256", kid="k2"),
        mount_token(h, private("p256"), "ES256"),
    ]
    for token in accepted:
        h.set_token(token)
        assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
        h.set_token(mount_token(h, vault_key, scope="read:/elsewhere"))
        assert wait_for(lambda: read_outcome(doc), errno.EACCES) == errno.EACCES

    refused = [
        mount_token(h, private("ed25519"), kid="k2"),
        mount_token(h, vault_key, kid="k1"),
        mount_token(h, private("p256"), "ES256", kid="k3"),
    ]
    for token in refused:
        h.set_token(mount_token(h, vault_key))
        assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
        h.set_token(token)
        assert wait_for(lambda: read_outcome(doc), errno.EACCES) == errno.EACCES


def test_replacing_the_jwks_file_takes_effect_without_a_remount(
    mounted: VaultHarness,
) -> None:
    h, doc = mounted, mounted.mnt / "doc"
    jwks = h.config_dir / "keys.json"
    h.set_token(mount_token(h, private("p256"), "ES256", kid="k2"))
    assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
    fd = os.open(doc, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == SECRET
        write_jwks(jwks, BOTH_KEYS[0])
        start = time.monotonic()
        assert wait_for(lambda: read_outcome(doc), errno.EACCES) == errno.EACCES
        assert time.monotonic() - start < SETTLE
        assert pread_outcome(fd) == errno.EACCES

        # An edit in place counts as well as a rename over the file.
        jwks.write_text(jwks_text(*BOTH_KEYS))
        assert wait_for(lambda: read_outcome(doc), SECRET, SETTLE) == SECRET
        assert pread_outcome(fd) == SECRET
    finally:
        os.close(fd)


# Revocation and the kernel's page cache race each other; enough rounds to
# catch an order that holds only most of the time.
REVOCATION_ROUNDS = 20


def first_refusal(path: Path, seconds: float = SETTLE) -> bytes | int:
    """Open ``path`` again and again, with no pause, until it is refused."""
    deadline = time.monotonic() + seconds
    outcome = read_outcome(path)
    while outcome != errno.EACCES and time.monotonic() < deadline:
        outcome = read_outcome(path)
    return outcome


def test_once_a_new_open_is_refused_an_old_handle_reads_nothing_cached(
    mounted: VaultHarness,
) -> None:
    h, doc = mounted, mounted.mnt / "doc"
    vault_key = (h.config_dir / "signing.key").read_bytes()
    allowed = mount_token(h, vault_key)
    revoked = mount_token(h, vault_key, scope="read:/elsewhere")
    for _ in range(REVOCATION_ROUNDS):
        h.set_token(allowed)
        assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
        fd = os.open(doc, os.O_RDONLY)
        try:
            assert os.pread(fd, 100, 0) == SECRET
            h.set_token(revoked)
            assert first_refusal(doc) == errno.EACCES
            assert pread_outcome(fd) == errno.EACCES
        finally:
            os.close(fd)


def test_a_broken_jwks_file_keeps_the_previous_keys(mounted: VaultHarness) -> None:
    """Documented behaviour: a JWKS file that cannot be used changes nothing.

    Removing a key means writing a valid JWKS without it, not breaking the file.
    """
    h, doc = mounted, mounted.mnt / "doc"
    jwks = h.config_dir / "keys.json"
    h.set_token(mount_token(h, private("p256"), "ES256", kid="k2"))
    assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
    jwks.write_text("{")
    deadline = time.monotonic() + SETTLE
    while "keys not reloaded" not in h.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_outcome(doc) == SECRET
    [line] = [x for x in h.log_text().splitlines() if "keys not reloaded" in x]
    assert line.endswith(
        "WARNING jwtfs.auth.sources: keys not reloaded, the previous ones stay in "
        f"use: {jwks}: not a JSON Web Key Set (Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1))"
    )
    expect_warning(h, line)


def test_a_jti_added_to_the_revocation_file_stops_access_without_a_remount(
    mounted: VaultHarness,
) -> None:
    h, doc = mounted, mounted.mnt / "doc"
    body = claims(h, jti="matrix-jti-1")
    h.set_token(sign(body, (h.config_dir / "signing.key").read_bytes()))
    assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
    fd = os.open(doc, os.O_RDONLY)
    try:
        revoked = h.config_dir / "revoked.txt"
        with revoked.open("a") as f:
            f.write("matrix-jti-1\n")
        start = time.monotonic()
        assert wait_for(lambda: read_outcome(doc), errno.EACCES) == errno.EACCES
        assert time.monotonic() - start < SETTLE
        assert pread_outcome(fd) == errno.EACCES
    finally:
        os.close(fd)
    refused = f"line 1, sub={body['sub']} fp="
    [line] = [x for x in h.log_text().splitlines() if refused in x]
    assert line.endswith("): revoked (its jti is in the revocation file)")


def test_a_token_file_others_can_read_is_accepted_with_a_warning(
    unmounted: VaultHarness,
) -> None:
    """Current behaviour: mode 0644 is a warning at mount, and silent on reload."""
    h, doc = unmounted, unmounted.mnt / "doc"
    vault_key = (h.config_dir / "signing.key").read_bytes()
    h.set_token(mount_token(h, vault_key, scope="read:/** write:/**"))
    h.token_file.chmod(0o644)
    since = len(h.log_text().splitlines())
    result = h.jwtfs("mount", str(h.mnt), "--token-file", str(h.token_file))
    try:
        shown = os.path.realpath(h.token_file)
        assert result.stderr == (
            f"jwtfs: warning: {shown}: mode 0644 lets other users see or change "
            f"the tokens; run chmod 600 {shown}\n"
        )
        (h.mnt / "doc").write_bytes(SECRET)
        staged = h.root / "open.jwt"
        staged.write_text(mount_token(h, vault_key, scope="read:/other") + "\n")
        staged.chmod(0o644)
        staged.replace(h.token_file)
        assert wait_for(lambda: read_outcome(doc), errno.EACCES) == errno.EACCES
        staged.write_text(mount_token(h, vault_key) + "\n")
        staged.chmod(0o666)
        staged.replace(h.token_file)
        assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
    finally:
        h.umount()
    lines = h.log_text().splitlines()[since:]
    assert [x for x in lines if " WARNING " in x or " ERROR " in x] == []


def _swap_symlink(link: Path, target: Path | str) -> None:
    """Point ``link`` at ``target`` in one rename, as ``ln -sfn`` via a temp does."""
    staged = link.with_name(link.name + ".swap")
    staged.unlink(missing_ok=True)
    os.symlink(target, staged)
    staged.replace(link)


def test_a_token_file_symlink_swapped_to_another_file_is_followed(
    unmounted: VaultHarness,
) -> None:
    """``--token-file`` names a symlink; swapping where it points swaps tokens.

    The way a deploy tool publishes a new token (or withdraws one) without ever
    leaving a half-written file.
    """
    h, doc = unmounted, unmounted.mnt / "doc"
    vault_key = (h.config_dir / "signing.key").read_bytes()
    first, second = h.root / "first.jwt", h.root / "second.jwt"
    first.write_text(mount_token(h, vault_key, scope="read:/** write:/**") + "\n")
    second.write_text(mount_token(h, vault_key, scope="read:/other") + "\n")
    for path in (first, second):
        path.chmod(0o600)
    link = h.root / "current.jwt"
    _swap_symlink(link, first.name)
    h.jwtfs("mount", str(h.mnt), "--token-file", str(link))
    try:
        (h.mnt / "doc").write_bytes(SECRET)
        _swap_symlink(link, second.name)
        assert wait_for(lambda: read_outcome(doc), errno.EACCES) == errno.EACCES
        _swap_symlink(link, first.name)
        assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
    finally:
        h.umount()


def test_a_token_file_swapped_for_a_fifo_device_directory_or_huge_file_is_read_safely(
    unmounted: VaultHarness,
) -> None:
    """Each hostile target drops the tokens at once and never hangs the daemon."""
    h, doc = unmounted, unmounted.mnt / "doc"
    vault_key = (h.config_dir / "signing.key").read_bytes()
    good = h.root / "good.jwt"
    good.write_text(mount_token(h, vault_key, scope="read:/** write:/**") + "\n")
    good.chmod(0o600)
    fifo, folder, huge = h.root / "fifo", h.root / "folder", h.root / "huge.jwt"
    if not fifo.exists():
        os.mkfifo(fifo, 0o600)
    folder.mkdir(exist_ok=True)
    line = mount_token(h, vault_key) + "\n"
    huge.write_text(line * (2 * MiB // len(line)))
    huge.chmod(0o600)
    shutil.copy(good, h.token_file)
    h.token_file.chmod(0o600)
    h.mount()
    shown = os.path.realpath(h.token_file)
    try:
        (h.mnt / "doc").write_bytes(SECRET)
        hostile: list[tuple[Path | str, str]] = [
            (fifo, f"{shown}: the token file is not a regular file"),
            ("/dev/zero", f"{shown}: the token file is not a regular file"),
            (folder, f"{shown}: the token file is not a regular file"),
            (huge, f"{shown}: the token file is larger than 1 MiB"),
            (h.root / "missing", f"{shown}: token file not found"),
        ]
        for target, reason in hostile:
            since = len(h.log_text().splitlines())
            _swap_symlink(h.token_file, target)
            start = time.monotonic()
            assert wait_for(lambda: read_outcome(doc), errno.EACCES) == errno.EACCES
            assert time.monotonic() - start < SETTLE, target
            assert stat.S_ISDIR(os.stat(h.mnt).st_mode)
            lines = h.log_text().splitlines()[since:]
            assert any(
                f"token file unusable, its tokens are dropped: {reason}" in x
                for x in lines
            ), (target, lines)
            _swap_symlink(h.token_file, good)
            assert wait_for(lambda: read_outcome(doc), SECRET) == SECRET
    finally:
        h.umount()
