"""Path-scope attacks through a real mount: one named test per threat.

One vault is mounted for the module. Each test first takes the whole mount
(``use(FULL)``), opens what it needs while the scope is wide, then narrows the
token in the token file and attacks from there; the daemon re-reads the file
without a remount. ``use`` waits until the daemon has logged the new token as
accepted and has had time to drop what the kernel cached.

The layout, written once::

    /in/a  /in/sub/b  /in/ln -> ../out/s  /in/abs -> MNT/out/s
    /in/c1 -> c2  /in/c2 -> ../out/s  /in/up -> ..
    /out/s (xattr user.k)  /out/dir/  /top.txt

Covered elsewhere and not repeated: a plain rename out of the scope and a hard
link by path into it (``tests/mount/test_vault_properties.py``), a replaced
token stopping an open read handle (same file).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.harness import VaultHarness

FULL = "read:/** write:/**"
IN_RW = "read:/in/** write:/in/**"
OUT_SECRET = b"out-of-scope plaintext 77a0\n"
IN_A = b"in a\n"
LEEWAY = 1
SETTLE = 0.3
"""Seconds for the daemon to invalidate kernel caches after taking a token."""

AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_serial = itertools.count()


def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The call's result, or the errno it failed with."""
    try:
        return call(*args, **kwargs)
    except OSError as err:
        return err.errno


def _libc_outcome(result: int) -> int:
    return 0 if result == 0 else ctypes.get_errno()


def linkat(src_fd: int, src: str, dst: Path, flags: int) -> int:
    return _libc_outcome(
        _libc.linkat(src_fd, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags)
    )


def renameat2(src: Path, dst: Path, flags: int) -> int:
    return _libc_outcome(
        _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags)
    )


def read(path: Path | str) -> bytes | int:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        return err.errno or 0


class Scoped:
    """The mounted vault, and how to hand it a new token."""

    def __init__(self, h: VaultHarness) -> None:
        self.h = h
        self.m = h.mnt
        config = tomllib.loads((h.config_dir / "config.toml").read_text())
        self.audience = str(config["auth"]["audience"])
        self.key = (h.config_dir / "signing.key").read_bytes()
        self.current: str | None = None
        """The scope of the token in the file, when ``use`` put it there."""

    def token(self, scope: str, *, ttl: float = 600, sub: str = "") -> str:
        now = time.time()
        body = {
            "aud": self.audience,
            "exp": int(now + ttl),
            "iat": int(now),
            "scope": scope,
            "sub": sub or f"scope-{next(_serial)}",
        }
        return jwt.encode(body, self.key, algorithm="EdDSA")

    def use(self, scope: str, *, ttl: float = 600) -> str:
        """Put a token for ``scope`` in the token file; return once it counts."""
        sub = f"scope-{next(_serial)}"
        self.h.set_token(self.token(scope, ttl=ttl, sub=sub))
        self.wait_log(f"token accepted: sub={sub} ")
        time.sleep(SETTLE)
        self.current = scope if ttl >= 600 else None
        return sub

    def wait_log(self, text: str, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.h.log_text():
            assert time.monotonic() < deadline, f"daemon never logged {text!r}"
            time.sleep(0.05)

    def log_since(self, mark: int) -> list[str]:
        return self.h.log_text().splitlines()[mark:]

    def log_mark(self) -> int:
        return len(self.h.log_text().splitlines())


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scoped]:
    h = VaultHarness(tmp_path_factory.mktemp("scope"))
    h.init()
    h.set_config("auth", "leeway", LEEWAY)
    s = Scoped(h)
    h.set_token(s.token(FULL))
    h.mount()
    m = h.mnt
    (m / "in" / "sub").mkdir(parents=True)
    (m / "in" / "a").write_bytes(IN_A)
    (m / "in" / "sub" / "b").write_bytes(b"in sub b\n")
    (m / "out" / "dir").mkdir(parents=True)
    (m / "out" / "s").write_bytes(OUT_SECRET)
    os.setxattr(m / "out" / "s", "user.k", b"hidden value")
    (m / "top.txt").write_bytes(b"top\n")
    os.symlink("../out/s", m / "in" / "ln")
    os.symlink(f"{m}/out/s", m / "in" / "abs")
    os.symlink("c2", m / "in" / "c1")
    os.symlink("../out/s", m / "in" / "c2")
    os.symlink("..", m / "in" / "up")
    yield s
    h.cleanup()
    bad = [x for x in h.log_text().splitlines() if " WARNING " in x or " ERROR " in x]
    assert bad == []


@pytest.fixture
def scoped(mounted: Scoped) -> Iterator[Scoped]:
    """The mount with the whole vault in scope; the layout checked after the test."""
    if mounted.current != FULL:
        mounted.use(FULL)
    yield mounted
    if mounted.current != FULL:
        mounted.use(FULL)
    m = mounted.m
    assert (m / "out" / "s").read_bytes() == OUT_SECRET
    assert (m / "in" / "a").read_bytes() == IN_A
    assert sorted(os.listdir(m)) == ["in", "out", "top.txt"]
    assert sorted(os.listdir(m / "out")) == ["dir", "s"]
    assert os.stat(m / "out" / "s").st_nlink == 1


# --- symlinks and '..' ---


def test_symlinks_from_inside_the_scope_to_outside_do_not_read_it(
    scoped: Scoped,
) -> None:
    m = scoped.m
    scoped.use(IN_RW)
    assert os.readlink(m / "in" / "ln") == "../out/s"
    assert os.readlink(m / "in" / "abs") == f"{m}/out/s"
    for name in ("ln", "abs", "c1", "c2"):
        assert read(m / "in" / name) == errno.EACCES, name

    os.symlink("../../out/s", m / "in" / "sub" / "new")
    try:
        assert read(m / "in" / "sub" / "new") == errno.EACCES
    finally:
        os.unlink(m / "in" / "sub" / "new")

    up = m / "in" / "up"
    assert os.listdir(up) == ["in"]
    assert read(up / "out" / "s") == errno.EACCES
    assert read(up / "top.txt") == errno.EACCES
    assert read(up / "in" / "a") == IN_A


def test_dotdot_chains_do_not_leave_the_scope(scoped: Scoped) -> None:
    m = scoped.m
    scoped.use(IN_RW)
    for chain in ("in/../out/s", "in/sub/../../out/s", "in/./sub/../../top.txt"):
        assert read(f"{m}/{chain}") == errno.EACCES, chain
    assert read(f"{m}/in/sub/../a") == IN_A

    in_fd = os.open(m / "in", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert outcome(os.open, "../out/s", os.O_RDONLY, dir_fd=in_fd) == errno.EACCES
        fd = os.open("sub/../a", os.O_RDONLY, dir_fd=in_fd)
        assert os.read(fd, 100) == IN_A
        os.close(fd)
    finally:
        os.close(in_fd)


# --- rename and link across the scope's edge ---


def test_rename_and_exchange_across_the_scope_edge_are_refused(
    scoped: Scoped,
) -> None:
    m = scoped.m
    out_fd = os.open(m / "out", os.O_RDONLY | os.O_DIRECTORY)
    try:
        scoped.use(IN_RW)
        assert renameat2(m / "in" / "a", m / "out" / "s", RENAME_EXCHANGE) == (
            errno.EACCES
        )
        assert renameat2(m / "in" / "sub", m / "out" / "dir", RENAME_EXCHANGE) == (
            errno.EACCES
        )
        assert outcome(os.rename, m / "in" / "sub", m / "out" / "sub") == errno.EACCES
        assert outcome(os.rename, "s", m / "in" / "s", src_dir_fd=out_fd) == (
            errno.EACCES
        )
        assert outcome(os.rename, m / "in" / "a", "a", dst_dir_fd=out_fd) == (
            errno.EACCES
        )
        assert sorted(os.listdir(m / "in")) == [
            "a",
            "abs",
            "c1",
            "c2",
            "ln",
            "sub",
            "up",
        ]
    finally:
        os.close(out_fd)


@pytest.mark.parametrize(
    ("grant", "exchange"),
    [("write:/out/mv", False), ("write:/out/*", False), ("write:/out/mv", True)],
    ids=["dir-entry", "wildcard-entry", "exchange"],
)
def test_moving_a_directory_does_not_carry_unreadable_content_into_scope(
    scoped: Scoped, grant: str, exchange: bool
) -> None:
    """Write on a directory's own entry is not read on what lies inside it.

    After the move, whatever the daemon answered, the bytes of the file below
    must not be readable through any path.
    """
    m = scoped.m
    (m / "out" / "mv").mkdir()
    (m / "out" / "mv" / "deep").write_bytes(OUT_SECRET)
    (m / "in" / "swap").mkdir()
    try:
        scoped.use(f"{IN_RW} {grant}")
        assert read(m / "out" / "mv" / "deep") == errno.EACCES
        if exchange:
            renameat2(m / "out" / "mv", m / "in" / "swap", RENAME_EXCHANGE)
        else:
            outcome(os.rename, m / "out" / "mv", m / "in" / "mv")
        for place in ("in/mv/deep", "in/swap/deep", "out/mv/deep"):
            assert read(m / place) in (errno.EACCES, errno.ENOENT), place
    finally:
        scoped.use(FULL)
        for place in ("in/mv", "in/swap", "out/mv"):
            shutil.rmtree(m / place, ignore_errors=True)


def test_hard_links_of_an_out_of_scope_file_into_scope_are_refused(
    scoped: Scoped,
) -> None:
    """Through descriptors opened while the scope was wide, not by path.

    ``AT_EMPTY_PATH`` and ``/proc/self/fd`` skip the kernel's lookup of the
    source, so the daemon's own check of the link's source must refuse it.
    """
    m = scoped.m
    file_fd = os.open(m / "out" / "s", os.O_RDONLY)
    out_fd = os.open(m / "out", os.O_RDONLY | os.O_DIRECTORY)
    try:
        scoped.use(IN_RW)
        mark = scoped.log_mark()
        assert linkat(file_fd, "", m / "in" / "h1", AT_EMPTY_PATH) == errno.EACCES
        proc = f"/proc/self/fd/{file_fd}"
        assert linkat(AT_FDCWD, proc, m / "in" / "h2", AT_SYMLINK_FOLLOW) == (
            errno.EACCES
        )
        assert linkat(out_fd, "s", m / "in" / "h3", 0) == errno.EACCES
        denials = [x for x in scoped.log_since(mark) if "access denied: " in x]
        assert any("access denied: write /out/s (token sub=" in x for x in denials)
        assert not {"h1", "h2", "h3"} & set(os.listdir(m / "in"))
    finally:
        os.close(file_fd)
        os.close(out_fd)


def test_a_directory_fd_opened_while_the_scope_was_wider_reaches_nothing_outside(
    scoped: Scoped,
) -> None:
    m = scoped.m
    out_fd = os.open(m / "out", os.O_RDONLY | os.O_DIRECTORY)
    try:
        scoped.use(IN_RW)
        assert outcome(os.open, "s", os.O_RDONLY, dir_fd=out_fd) == errno.EACCES
        assert outcome(os.open, "new", os.O_CREAT | os.O_WRONLY, dir_fd=out_fd) == (
            errno.EACCES
        )
        assert outcome(os.stat, "s", dir_fd=out_fd) == errno.EACCES
        assert outcome(os.listdir, out_fd) == errno.EACCES
        assert outcome(os.mkdir, "x", dir_fd=out_fd) == errno.EACCES
        assert outcome(os.unlink, "s", dir_fd=out_fd) == errno.EACCES
        assert outcome(os.fstat, out_fd) == errno.EACCES
        via_proc = f"/proc/self/fd/{out_fd}/s"
        assert outcome(os.getxattr, via_proc, "user.k") == errno.EACCES
        assert read(via_proc) == errno.EACCES
    finally:
        os.close(out_fd)


# --- what refusals and listings reveal ---

_PROBES: dict[str, Callable[[Path], Any]] = {
    "stat": os.stat,
    "lstat": os.lstat,
    "open-read": lambda p: os.open(p, os.O_RDONLY),
    "open-write": lambda p: os.open(p, os.O_WRONLY),
    "open-create": lambda p: os.open(p, os.O_WRONLY | os.O_CREAT, 0o600),
    "getxattr": lambda p: os.getxattr(p, "user.k"),
    "getxattr-cid": lambda p: os.getxattr(p, "user.jwtfs.cid"),
    "listxattr": os.listxattr,
    "setxattr": lambda p: os.setxattr(p, "user.k", b"x"),
    "readlink": os.readlink,
    "chmod": lambda p: os.chmod(p, 0o600),
    "utime": lambda p: os.utime(p, (0, 0)),
    "truncate": lambda p: os.truncate(p, 0),
    "unlink": os.unlink,
    "rmdir": os.rmdir,
    "listdir": os.listdir,
    "mkdir-below": lambda p: os.mkdir(p / "x"),
    "stat-below": lambda p: os.stat(p / "x"),
}


@pytest.mark.parametrize("probe", sorted(_PROBES))
def test_out_of_scope_names_give_eacces_whether_they_exist_or_not(
    scoped: Scoped, probe: str
) -> None:
    m = scoped.m
    call = _PROBES[probe]
    scoped.use("read:/in/**")
    pairs = [("out/s", "out/nope"), ("top.txt", "nope.txt"), ("out/dir", "out/nodir")]
    for existing, missing in pairs:
        assert outcome(call, m / existing) == errno.EACCES, existing
        assert outcome(call, m / missing) == errno.EACCES, missing


def test_a_wildcard_directory_grant_does_not_reveal_which_names_exist(
    scoped: Scoped,
) -> None:
    """``read:/*/a`` reaches every top-level directory, and no top-level file.

    A top-level file and a top-level name that does not exist must answer
    alike (DESIGN.md: an out-of-scope name gives EACCES whether or not it
    exists), or the grant tells its holder which files are there.
    """
    m = scoped.m
    scoped.use("read:/*/a")
    assert read(m / "in" / "a") == IN_A
    assert sorted(os.listdir(m)) == ["in", "out"]
    for call in (os.stat, os.listxattr, lambda p: os.open(p, os.O_RDONLY)):
        assert outcome(call, m / "top.txt") == errno.EACCES
        assert outcome(call, m / "nope.txt") == errno.EACCES


def test_listings_and_attributes_show_only_what_the_token_reaches(
    scoped: Scoped,
) -> None:
    m = scoped.m
    scoped.use("read:/in/a")
    assert os.listdir(m) == ["in"]
    assert os.listdir(m / "in") == ["a"]
    assert [e.name for e in os.scandir(m / "in")] == ["a"]
    assert read(m / "in" / "a") == IN_A
    assert outcome(os.stat, m / "in" / "sub") == errno.EACCES
    assert outcome(os.stat, m / "out") == errno.EACCES
    assert outcome(os.getxattr, m / "in", "user.k") == errno.EACCES
    assert outcome(os.listxattr, m / "in") == errno.EACCES
    assert os.listxattr(m / "in" / "a") == []
    # Documented in docs/SECURITY.md: a directory the token may see shows its
    # own link count, which counts its subdirectories, hidden ones too.
    assert os.stat(m / "in").st_nlink == 3


def _statfs_view(path: Path) -> tuple[int, ...]:
    v = os.statvfs(path)
    return (v.f_frsize, v.f_blocks, v.f_files, v.f_namemax)


def test_statfs_reports_the_store_disk_whatever_the_token(scoped: Scoped) -> None:
    """statfs answers even without a valid token, with the disk's own figures.

    Those the same user reads from the data directory anyway; nothing about the
    vault's files is in them.
    """
    m, h = scoped.m, scoped.h
    disk = os.statvfs(h.data_dir)
    expected = (disk.f_frsize, disk.f_blocks, disk.f_files, 255)
    assert _statfs_view(m) == expected
    scoped.use("read:/in/a")
    assert _statfs_view(m) == expected
    scoped.current = None
    h.set_token(scoped.token(FULL, ttl=-3600, sub="statfs-expired"))
    scoped.wait_log("sub=statfs-expired fp=")
    time.sleep(SETTLE)
    assert outcome(os.listdir, m) == errno.EACCES
    assert _statfs_view(m) == expected


# --- open handles and tokens that change under them ---


def test_an_open_handle_stops_when_its_token_expires(scoped: Scoped) -> None:
    m = scoped.m
    ttl = 2.0
    scoped.use(FULL, ttl=ttl)
    started = time.monotonic()
    fd = os.open(m / "in" / "a", os.O_RDWR)
    try:
        assert os.pread(fd, 100, 0) == IN_A
        while outcome(os.pread, fd, 100, 0) == IN_A:
            assert time.monotonic() - started < ttl + LEEWAY + 2.0
            time.sleep(0.05)
        assert outcome(os.pread, fd, 100, 0) == errno.EACCES
        assert outcome(os.pwrite, fd, b"x", 0) == errno.EACCES
        assert outcome(os.ftruncate, fd, 0) == errno.EACCES
        assert outcome(os.fstat, fd) == errno.EACCES
        # The handle follows the tokens of the moment: a new token revives it.
        scoped.use(FULL)
        assert os.pread(fd, 100, 0) == IN_A
    finally:
        os.close(fd)


def test_an_open_handle_follows_a_narrowed_token(scoped: Scoped) -> None:
    m = scoped.m
    fd = os.open(m / "in" / "a", os.O_RDWR)
    try:
        scoped.use("read:/in/**")
        assert os.pread(fd, 100, 0) == IN_A
        assert outcome(os.pwrite, fd, b"x", 0) == errno.EACCES
        assert outcome(os.ftruncate, fd, 0) == errno.EACCES
        scoped.use("read:/out/**")
        assert outcome(os.pread, fd, 100, 0) == errno.EACCES
    finally:
        os.close(fd)


def test_a_token_swapped_between_lookup_and_open_is_checked_at_open(
    scoped: Scoped,
) -> None:
    """An ``O_PATH`` descriptor is a finished lookup with no open yet."""
    m = scoped.m
    path_fd = os.open(m / "in" / "a", os.O_PATH)
    try:
        scoped.use("read:/out/**")
        reopen = f"/proc/self/fd/{path_fd}"
        assert outcome(os.open, reopen, os.O_RDONLY) == errno.EACCES
        assert outcome(os.fstat, path_fd) == errno.EACCES
        scoped.use("read:/in/**")
        fd = os.open(reopen, os.O_RDONLY)
        assert os.read(fd, 100) == IN_A
        os.close(fd)
        assert outcome(os.open, reopen, os.O_WRONLY) == errno.EACCES
    finally:
        os.close(path_fd)


# --- other local users ---


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another uid")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_another_uid_is_refused_by_the_kernel(scoped: Scoped) -> None:
    """allow_other is off: the kernel refuses every uid but the mounting one.

    Descriptors opened by root are handed to the child, so no directory mode
    on the way to the mountpoint is what refuses it; a descriptor on /usr
    shows the child can use a handed-over directory. The daemon never hears
    of these requests, so it logs no denial.
    """
    m = scoped.m
    as_other = ["setpriv", "--reuid", "1234", "--regid", "1234", "--clear-groups"]
    root_fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    usr_fd = os.open("/usr", os.O_RDONLY | os.O_DIRECTORY)
    try:
        mount_dir, usr = f"/proc/self/fd/{root_fd}", f"/proc/self/fd/{usr_fd}"
        commands = [
            ["stat", "-L", "-c", "%i", mount_dir],
            ["ls", f"{mount_dir}/"],
            ["cat", f"{mount_dir}/in/a"],
        ]
        mark = scoped.log_mark()
        for command in commands:
            mine = subprocess.run(command, pass_fds=(root_fd,), capture_output=True)
            assert mine.returncode == 0, command
            theirs = subprocess.run(
                as_other + command, pass_fds=(root_fd,), capture_output=True, text=True
            )
            assert theirs.returncode != 0, command
            assert "Permission denied" in theirs.stderr, theirs.stderr
        assert [x for x in scoped.log_since(mark) if "access denied" in x] == []
        control = subprocess.run(
            [*as_other, "ls", f"{usr}/"], pass_fds=(usr_fd,), capture_output=True
        )
        assert control.returncode == 0
    finally:
        os.close(root_fd)
        os.close(usr_fd)
