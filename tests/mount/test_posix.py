"""POSIX behaviour through a real mount: the calls everyday tools make.

Every test asserts exact values and errnos, and most check again after a
remount, since the index, not the kernel's caches, must hold the truth.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest

from jwtfs.crypto.segments import DEFAULT_SEGMENT_SIZE as S
from tests.harness import VaultHarness

AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
_libc = ctypes.CDLL(None, use_errno=True)


def _errno_of(call: object, *args: object) -> int:
    assert callable(call)
    with pytest.raises(OSError) as err:
        call(*args)
    return int(err.value.errno or 0)


def _renameat2(old: Path, new: Path, flags: int) -> int:
    """Return 0 or the errno of renameat2(2)."""
    rc = _libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags)
    return 0 if rc == 0 else ctypes.get_errno()


def _stream_count(vault: VaultHarness) -> int:
    root = vault.data_dir / "store" / "streams"
    return sum(1 for p in root.glob("*/*") if p.is_file())


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What a tree is: per path its type, mode, owner, size, mtime and content."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(p))
            elif stat.S_ISFIFO(st.st_mode):
                result[rel] = ("fifo", st.st_mode, st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
            else:
                result[rel] = (
                    "file",
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_nlink,
                    p.read_bytes(),
                )
    return result


def _make_tree(root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "d" / "big.bin").write_bytes(bytes(range(256)) * (S // 128 + 3))
    (root / "d" / "e" / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "a.txt", 0o640)
    os.chmod(root / "d" / "e", 0o750)
    os.symlink("../a.txt", root / "d" / "link")
    for i, p in enumerate(
        [
            root / "a.txt",
            root / "d" / "big.bin",
            root / "d" / "e" / "empty",
            root / "run.sh",
            root / "d" / "e",
            root / "d",
        ]
    ):
        t = 1_600_000_000_000_000_000 + i * 1_000_000_123
        os.utime(p, ns=(t, t))


# Files


def test_create_read_write_seek(vault: VaultHarness) -> None:
    p = vault.mnt / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        assert os.write(fd, b"hello world") == 11
        assert os.lseek(fd, 0, os.SEEK_CUR) == 11
        assert os.lseek(fd, 6, os.SEEK_SET) == 6
        assert os.read(fd, 100) == b"world"
        assert os.lseek(fd, -5, os.SEEK_END) == 6
        assert os.write(fd, b"WORLD!") == 6
        assert os.pread(fd, 100, 0) == b"hello WORLD!"
        assert os.read(fd, 10) == b""
        assert os.pwrite(fd, b"x" * 10, S - 5) == 10
        assert os.fstat(fd).st_size == S + 5
    finally:
        os.close(fd)
    assert _errno_of(os.open, p, os.O_RDWR | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    expected = b"hello WORLD!" + b"\0" * (S - 17) + b"x" * 10
    assert p.read_bytes() == expected
    assert _errno_of(os.open, vault.mnt / "missing", os.O_RDONLY) == errno.ENOENT
    vault.remount()
    assert p.read_bytes() == expected


def test_a_shell_redirect_commits_one_version(vault: VaultHarness) -> None:
    script = 'echo hi > "$1/new"; : > "$1/empty"; exec 3> "$1/fd3"; echo x >&3'
    subprocess.run(["bash", "-c", script, "bash", str(vault.mnt)], check=True)
    with contextlib.closing(sqlite3.connect(vault.data_dir / "index.sqlite3")) as db:
        sizes = sorted(size for (size,) in db.execute("SELECT size FROM versions"))
    assert sizes == [0, 2, 3]
    assert (vault.mnt / "new").read_bytes() == b"hi\n"
    assert (vault.mnt / "empty").read_bytes() == b""
    assert (vault.mnt / "fd3").read_bytes() == b"x\n"


def test_o_append(vault: VaultHarness) -> None:
    p = vault.mnt / "log"
    p.write_bytes(b"a" * (S - 1))
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for _ in range(3):
            os.lseek(fd, 0, os.SEEK_SET)
            assert os.write(fd, b"bc") == 2
        os.pwrite(fd, b"Z", 0)
    finally:
        os.close(fd)
    data = p.read_bytes()
    # On Linux, pwrite on an O_APPEND descriptor appends too.
    assert data == b"a" * (S - 1) + b"bcbcbc" + b"Z"
    vault.remount()
    assert p.read_bytes() == b"a" * (S - 1) + b"bcbcbc" + b"Z"


def test_truncate_shrink_grow_sparse(vault: VaultHarness) -> None:
    p = vault.mnt / "t"
    data = os.urandom(3 * S + 100)
    p.write_bytes(data)
    os.truncate(p, S + 7)
    assert os.stat(p).st_size == S + 7
    assert p.read_bytes() == data[: S + 7]
    os.truncate(p, 4 * S)
    assert p.read_bytes() == data[: S + 7] + b"\0" * (3 * S - 7)
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        assert os.fstat(fd).st_size == 10
        os.pwrite(fd, b"end", 10 * S)
        assert os.fstat(fd).st_size == 10 * S + 3
        assert os.pread(fd, 20, 5 * S) == b"\0" * 20
        os.ftruncate(fd, 0)
        assert os.pread(fd, 10, 0) == b""
        os.pwrite(fd, b"q", 2 * S)
    finally:
        os.close(fd)
    expected = b"\0" * (2 * S) + b"q"
    assert p.read_bytes() == expected
    vault.remount()
    assert p.read_bytes() == expected
    assert os.stat(p).st_size == 2 * S + 1


def _read_uncached(fd: int, length: int, offset: int) -> bytes:
    """pread past the kernel's page cache, so the daemon answers."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return os.pread(fd, length, offset)


def test_sequential_reads_see_every_later_change(vault: VaultHarness) -> None:
    p = vault.mnt / "ahead"
    data = bytearray(os.urandom(40 * S + 123))
    p.write_bytes(data)
    vault.remount()
    reader = os.open(p, os.O_RDONLY)
    writer = os.open(p, os.O_WRONLY)
    try:
        # The first reads go to the disk and decrypt well past what they ask.
        assert _read_uncached(reader, 2 * S, 0) == data[: 2 * S]
        assert _read_uncached(reader, 2 * S, 2 * S) == data[2 * S : 4 * S]
        # Enough new segments behind it that the daemon's write cache lets
        # the changed segment go before it is read again.
        rewrite = os.urandom(34 * S)
        os.pwrite(writer, b"W" * 100, 5 * S + 10)
        os.pwrite(writer, rewrite, 6 * S)
        data[5 * S + 10 : 5 * S + 110] = b"W" * 100
        data[6 * S : 40 * S] = rewrite
        assert _read_uncached(reader, 2 * S, 4 * S) == data[4 * S : 6 * S]
        assert _read_uncached(reader, 2 * S, 6 * S) == data[6 * S : 8 * S]
        os.ftruncate(writer, 9 * S + 1)
        os.ftruncate(writer, 12 * S)
        del data[9 * S + 1 :]
        data.extend(bytes(12 * S - len(data)))
        assert _read_uncached(reader, 4 * S, 8 * S) == data[8 * S : 12 * S]
        assert _read_uncached(reader, S, 12 * S) == b""
    finally:
        os.close(writer)
        os.close(reader)
    assert p.read_bytes() == data
    vault.remount()
    assert p.read_bytes() == data


# Directories


def test_mkdir_rmdir_readdir(vault: VaultHarness) -> None:
    d = vault.mnt / "d"
    os.mkdir(d, 0o755)
    assert stat.S_ISDIR(os.stat(d).st_mode)
    assert os.stat(d).st_nlink == 2
    assert _errno_of(os.mkdir, d) == errno.EEXIST
    (d / "f").write_text("x")
    assert _errno_of(os.rmdir, d) == errno.ENOTEMPTY
    assert _errno_of(os.rmdir, d / "f") == errno.ENOTDIR
    assert _errno_of(os.unlink, d) == errno.EISDIR
    assert _errno_of(os.rmdir, vault.mnt / "nope") == errno.ENOENT
    os.mkdir(d / "sub")
    assert os.stat(d).st_nlink == 3
    os.rmdir(d / "sub")
    assert os.stat(d).st_nlink == 2
    os.unlink(d / "f")
    os.rmdir(d)
    assert os.listdir(vault.mnt) == []


def test_readdir_of_1000_entries(vault: VaultHarness) -> None:
    big = vault.mnt / "many"
    big.mkdir()
    names = {f"entry-{i:04d}-{'n' * (i % 50)}" for i in range(1000)}
    for name in names:
        fd = os.open(big / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    listed = os.listdir(big)
    assert len(listed) == 1000
    assert set(listed) == names
    with os.scandir(big) as it:
        scanned = [e.name for e in it]
    assert sorted(scanned) == sorted(names)
    vault.remount()
    listed = os.listdir(big)
    assert len(listed) == 1000
    assert set(listed) == names


# Rename


def test_a_removed_directory_still_in_use_does_not_lend_its_number(
    vault: VaultHarness,
) -> None:
    parent = vault.mnt / "shrep"
    (parent / "work").mkdir(parents=True)
    old = os.stat(parent / "work").st_ino
    holder = subprocess.Popen(["sleep", "30"], cwd=parent / "work")
    try:
        time.sleep(0.3)
        (parent / "work").rmdir()
        (parent / "work2").mkdir()
        assert os.stat(parent / "work2").st_ino != old
        (parent / "work2" / "file").write_bytes(b"x")
        (parent / "work2" / "sub").mkdir()
    finally:
        holder.kill()
        holder.wait()
    assert sorted(os.listdir(parent / "work2")) == ["file", "sub"]
    vault.remount()
    (parent / "work3").mkdir()
    assert os.stat(parent / "work3").st_ino > os.stat(parent / "work2").st_ino


def test_rename_over_existing_file(vault: VaultHarness) -> None:
    a, b = vault.mnt / "a", vault.mnt / "b"
    a.write_text("A")
    b.write_text("B")
    ino = os.stat(a).st_ino
    os.rename(a, b)
    assert os.listdir(vault.mnt) == ["b"]
    assert b.read_text() == "A"
    assert os.stat(b).st_ino == ino
    vault.remount()
    assert os.listdir(vault.mnt) == ["b"]
    assert b.read_text() == "A"


def test_rename_directories(vault: VaultHarness) -> None:
    (vault.mnt / "x" / "y").mkdir(parents=True)
    (vault.mnt / "x" / "y" / "f").write_text("deep")
    (vault.mnt / "empty").mkdir()
    (vault.mnt / "full").mkdir()
    (vault.mnt / "full" / "g").write_text("g")
    os.rename(vault.mnt / "x", vault.mnt / "empty")
    assert (vault.mnt / "empty" / "y" / "f").read_text() == "deep"
    assert _errno_of(os.rename, vault.mnt / "empty", vault.mnt / "full") in (
        errno.ENOTEMPTY,
        errno.EEXIST,
    )
    assert _errno_of(os.rename, vault.mnt / "empty", vault.mnt / "full" / "g") == (
        errno.ENOTDIR
    )
    assert _errno_of(os.rename, vault.mnt / "full" / "g", vault.mnt / "empty") == (
        errno.EISDIR
    )
    assert (
        _errno_of(os.rename, vault.mnt / "empty", vault.mnt / "empty" / "y" / "inside")
        == errno.EINVAL
    )
    os.rename(vault.mnt / "empty" / "y", vault.mnt / "full" / "y")
    assert os.stat(vault.mnt / "empty").st_nlink == 2
    assert os.stat(vault.mnt / "full").st_nlink == 3
    vault.remount()
    assert sorted(os.listdir(vault.mnt)) == ["empty", "full"]
    assert (vault.mnt / "full" / "y" / "f").read_text() == "deep"
    assert os.listdir(vault.mnt / "empty") == []


def test_rename_open_file(vault: VaultHarness) -> None:
    p = vault.mnt / "open"
    p.write_bytes(b"0123456789")
    fd = os.open(p, os.O_RDWR)
    try:
        os.rename(p, vault.mnt / "moved")
        os.pwrite(fd, b"ab", 0)
        assert os.pread(fd, 10, 0) == b"ab23456789"
    finally:
        os.close(fd)
    assert (vault.mnt / "moved").read_bytes() == b"ab23456789"
    assert os.listdir(vault.mnt) == ["moved"]


def test_renameat2_flags(vault: VaultHarness) -> None:
    a, b, c = vault.mnt / "a", vault.mnt / "b", vault.mnt / "c"
    a.write_text("AAA")
    b.write_text("B")
    ino_a, ino_b = os.stat(a).st_ino, os.stat(b).st_ino

    assert _renameat2(a, b, RENAME_NOREPLACE) == errno.EEXIST
    assert (a.read_text(), b.read_text()) == ("AAA", "B")
    assert _renameat2(a, c, RENAME_NOREPLACE) == 0
    assert sorted(os.listdir(vault.mnt)) == ["b", "c"]
    os.rename(c, a)

    assert _renameat2(a, b, RENAME_EXCHANGE) == 0
    assert (a.read_text(), b.read_text()) == ("B", "AAA")
    assert (os.stat(a).st_ino, os.stat(b).st_ino) == (ino_b, ino_a)
    assert _renameat2(a, vault.mnt / "none", RENAME_EXCHANGE) == errno.ENOENT

    assert _renameat2(a, c, RENAME_WHITEOUT) == errno.EINVAL
    assert _renameat2(a, c, RENAME_NOREPLACE | RENAME_EXCHANGE) == errno.EINVAL
    assert sorted(os.listdir(vault.mnt)) == ["a", "b"]
    vault.remount()
    assert (a.read_text(), b.read_text()) == ("B", "AAA")


# Unlink while open


def test_unlink_while_open(vault: VaultHarness) -> None:
    before = _stream_count(vault)
    p = vault.mnt / "gone"
    data = os.urandom(2 * S + 9)
    p.write_bytes(data)
    assert _stream_count(vault) == before + 1
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert os.listdir(vault.mnt) == []
        assert _errno_of(os.stat, p) == errno.ENOENT
        assert os.pread(fd, len(data) + 1, 0) == data
        assert os.pwrite(fd, b"new", S) == 3
        assert os.pread(fd, 5, S - 1) == data[S - 1 : S] + b"new" + data[S + 3 : S + 4]
        assert os.fstat(fd).st_nlink == 0
        assert os.fstat(fd).st_size == 2 * S + 9
        os.fsync(fd)
    finally:
        os.close(fd)
    deadline = time.monotonic() + 2
    while _stream_count(vault) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stream_count(vault) == before
    staging = vault.data_dir / "staging"
    assert [q.name for q in staging.iterdir()] == []
    vault.remount()
    assert os.listdir(vault.mnt) == []
    assert _stream_count(vault) == before


# Links, attributes, xattrs


def test_symlink_readlink(vault: VaultHarness) -> None:
    (vault.mnt / "target").write_text("t")
    os.symlink("target", vault.mnt / "rel")
    os.symlink("/nowhere/at/all", vault.mnt / "dangling")
    long_target = "x/" * 500 + "end"
    os.symlink(long_target, vault.mnt / "long")
    assert os.readlink(vault.mnt / "rel") == "target"
    assert (vault.mnt / "rel").read_text() == "t"
    assert os.readlink(vault.mnt / "dangling") == "/nowhere/at/all"
    assert _errno_of(os.stat, vault.mnt / "dangling") == errno.ENOENT
    assert stat.S_ISLNK(os.lstat(vault.mnt / "rel").st_mode)
    assert os.lstat(vault.mnt / "rel").st_size == 6
    assert _errno_of(os.readlink, vault.mnt / "target") == errno.EINVAL
    assert _errno_of(os.symlink, "x", vault.mnt / "rel") == errno.EEXIST
    vault.remount()
    assert os.readlink(vault.mnt / "long") == long_target
    assert os.readlink(vault.mnt / "rel") == "target"


def test_hard_links(vault: VaultHarness) -> None:
    a = vault.mnt / "a"
    a.write_text("one")
    (vault.mnt / "d").mkdir()
    os.link(a, vault.mnt / "d" / "b")
    b = vault.mnt / "d" / "b"
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert os.stat(a).st_nlink == 2
    with open(b, "a") as f:
        f.write("two")
    assert a.read_text() == "onetwo"
    assert os.stat(a).st_size == 6
    assert _errno_of(os.link, vault.mnt / "d", vault.mnt / "dl") == errno.EPERM
    assert _errno_of(os.link, a, b) == errno.EEXIST
    vault.remount()
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert os.stat(b).st_nlink == 2
    os.unlink(a)
    assert b.read_text() == "onetwo"
    assert os.stat(b).st_nlink == 1


def test_chmod_chown(vault: VaultHarness) -> None:
    p = vault.mnt / "f"
    p.write_text("x")
    os.chmod(p, 0o4751)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4751
    os.chmod(p, 0o600)
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o600
    os.chown(p, -1, 42)
    assert (os.stat(p).st_uid, os.stat(p).st_gid) == (1234, 42)
    os.mkdir(vault.mnt / "d", 0o700)
    os.chown(vault.mnt / "d", 7, 8)
    vault.remount()
    st = os.stat(p)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 42, 0o600)
    st = os.stat(vault.mnt / "d")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o700)


def test_utimens_nanoseconds(vault: VaultHarness) -> None:
    p = vault.mnt / "f"
    p.write_text("x")
    atime, mtime = 1_234_567_891_123_456_789, 1_300_000_000_987_654_321
    os.utime(p, ns=(atime, mtime))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    os.mkdir(vault.mnt / "d")
    os.utime(vault.mnt / "d", ns=(5, 999_999_999))
    before = time.time_ns()
    os.utime(p)
    assert os.stat(p).st_mtime_ns >= before - 10**9
    os.utime(p, ns=(atime, mtime))
    vault.remount()
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    st = os.stat(vault.mnt / "d")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5, 999_999_999)


def test_statfs(vault: VaultHarness) -> None:
    sv = os.statvfs(vault.mnt)
    disk = os.statvfs(vault.data_dir / "store")
    assert sv.f_namemax == 255
    assert sv.f_frsize == disk.f_frsize
    assert sv.f_blocks == disk.f_blocks
    assert abs(sv.f_bavail - disk.f_bavail) * disk.f_frsize < 64 * 2**20
    assert sv.f_bavail <= sv.f_bfree <= sv.f_blocks


def test_xattrs(vault: VaultHarness) -> None:
    p = vault.mnt / "f"
    p.write_text("x")
    os.setxattr(p, "user.a", b"1")
    os.setxattr(p, "user.b", b"\0binary\xff" * 100)
    assert os.getxattr(p, "user.a") == b"1"
    assert os.getxattr(p, "user.b") == b"\0binary\xff" * 100
    assert sorted(os.listxattr(p)) == ["user.a", "user.b"]
    os.setxattr(p, "user.a", b"22")
    assert os.getxattr(p, "user.a") == b"22"
    assert _errno_of(os.getxattr, p, "user.missing") == errno.ENODATA
    assert _errno_of(os.removexattr, p, "user.missing") == errno.ENODATA
    os.removexattr(p, "user.b")
    assert os.listxattr(p) == ["user.a"]
    vault.remount()
    assert os.getxattr(p, "user.a") == b"22"
    assert os.listxattr(p) == ["user.a"]


def test_the_jwtfs_xattr_namespace_is_read_only(vault: VaultHarness) -> None:
    p = vault.mnt / "f"
    p.write_text("x")
    assert os.getxattr(p, "user.jwtfs.pin") == b"local"
    cid = os.getxattr(p, "user.jwtfs.cid")
    for name in ("user.jwtfs.cid", "user.jwtfs.pin", "user.jwtfs.note", "user.jwtfs"):
        assert _errno_of(os.setxattr, p, name, b"v") == errno.EPERM, name
    for name in ("user.jwtfs.cid", "user.jwtfs.pin"):
        assert _errno_of(os.removexattr, p, name) == errno.EPERM, name
    os.setxattr(p, "user.jwtfsnote", b"ok")
    assert os.listxattr(p) == ["user.jwtfsnote"]
    assert os.getxattr(p, "user.jwtfs.cid") == cid


def test_xattr_create_replace_flags(vault: VaultHarness) -> None:
    p = vault.mnt / "f"
    p.write_text("x")
    os.setxattr(p, "user.a", b"1")
    assert _errno_of(os.setxattr, p, "user.a", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert os.getxattr(p, "user.a") == b"1"
    assert (
        _errno_of(os.setxattr, p, "user.none", b"2", os.XATTR_REPLACE) == errno.ENODATA
    )
    assert os.listxattr(p) == ["user.a"]
    os.setxattr(p, "user.a", b"3", os.XATTR_REPLACE)
    os.setxattr(p, "user.c", b"4", os.XATTR_CREATE)
    assert (os.getxattr(p, "user.a"), os.getxattr(p, "user.c")) == (b"3", b"4")


def test_fsync(vault: VaultHarness) -> None:
    p = vault.mnt / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"synced")
        os.fsync(fd)
        os.fdatasync(fd)
        os.write(fd, b" again")
        os.fsync(fd)
    finally:
        os.close(fd)
    d = os.open(vault.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(d)
    finally:
        os.close(d)
    vault.remount()
    assert p.read_bytes() == b"synced again"


# mmap


def test_mmap_read_and_shared_write(vault: VaultHarness) -> None:
    p = vault.mnt / "m"
    data = bytearray(os.urandom(3 * S))
    p.write_bytes(bytes(data))
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == bytes(data)
        assert m[S - 3 : S + 3] == bytes(data[S - 3 : S + 3])

    fd = os.open(p, os.O_RDWR)
    try:
        with mmap.mmap(fd, 3 * S, flags=mmap.MAP_SHARED) as m:
            m[S - 2 : S + 2] = b"MMAP"
            m[0:4] = b"HEAD"
            m.flush()
        data[S - 2 : S + 2] = b"MMAP"
        data[0:4] = b"HEAD"
        assert os.pread(fd, 3 * S, 0) == bytes(data)
    finally:
        os.close(fd)
    assert p.read_bytes() == bytes(data)
    vault.remount()
    assert p.read_bytes() == bytes(data)


# Large offsets


def test_offsets_past_4_gib(vault: VaultHarness) -> None:
    p = vault.mnt / "huge"
    off = 5 * 2**30
    start = time.monotonic()
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"far away", off) == 8
        assert os.pread(fd, 8, off) == b"far away"
        assert os.fstat(fd).st_size == off + 8
        assert os.pread(fd, 16, 2**32 - 8) == b"\0" * 16
    finally:
        os.close(fd)
    assert os.stat(p).st_size == off + 8
    with open(p, "rb") as f:
        f.seek(off - 4)
        assert f.read() == b"\0" * 4 + b"far away"
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"5 GiB sparse write took {elapsed:.1f} s"


# Real tools


def test_tar_round_trip(vault: VaultHarness, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    _make_tree(src)
    archive = vault.mnt / "tree.tar"
    r = subprocess.run(
        ["tar", "--format=posix", "-C", str(src), "-cf", str(archive), "."],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (vault.mnt / "x").mkdir()
    r = subprocess.run(
        ["tar", "-C", str(vault.mnt / "x"), "-xpf", str(archive)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert _snapshot(vault.mnt / "x") == _snapshot(src)
    vault.remount()
    r = subprocess.run(
        f"tar --format=posix -C {vault.mnt / 'x'} -cf - . | tar -C {out} -xpf -",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert _snapshot(out) == _snapshot(src)


def test_cp_a_preserves_mode_and_mtimes(vault: VaultHarness, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src)
    r = subprocess.run(
        ["cp", "-a", str(src), str(vault.mnt / "copy")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    expected = _snapshot(src)
    assert _snapshot(vault.mnt / "copy") == expected
    vault.remount()
    assert _snapshot(vault.mnt / "copy") == expected


def test_remount_keeps_everything(vault: VaultHarness) -> None:
    m = vault.mnt
    _make_tree(m)
    os.link(m / "a.txt", m / "d" / "hard")
    os.chown(m / "run.sh", 1000, 1000)
    os.setxattr(m / "a.txt", "user.tag", b"kept")
    os.mkfifo(m / "fifo")
    before = _snapshot(m)
    assert before["fifo"][1] == stat.S_IFIFO | 0o644
    vault.umount()
    assert os.listdir(m) == []
    vault.mount()
    assert _snapshot(m) == before
    assert os.getxattr(m / "a.txt", "user.tag") == b"kept"
    assert os.stat(m / "d" / "hard").st_ino == os.stat(m / "a.txt").st_ino
