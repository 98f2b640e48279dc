"""Everyday file operations through a real mount, checked again after a remount."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.harness import VaultHarness


def test_write_read_remount(vault: VaultHarness) -> None:
    p = vault.mnt / "hello.txt"
    p.write_bytes(b"hello world\n")
    assert p.read_bytes() == b"hello world\n"
    assert os.stat(p).st_size == 12
    vault.remount()
    assert p.read_bytes() == b"hello world\n"


def test_large_file_random_access(vault: VaultHarness) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    p = vault.mnt / "big.bin"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"PATCH", 65536 - 2)
        expected = bytearray(data)
        expected[65534:65539] = b"PATCH"
        assert os.pread(fd, 100, 65500) == bytes(expected[65500:65600])
    finally:
        os.close(fd)
    assert p.read_bytes() == bytes(expected)
    vault.remount()
    assert p.read_bytes() == bytes(expected)


def test_directories_and_rename(vault: VaultHarness) -> None:
    (vault.mnt / "a" / "b").mkdir(parents=True)
    (vault.mnt / "a" / "b" / "f").write_text("x")
    os.rename(vault.mnt / "a", vault.mnt / "c")
    assert (vault.mnt / "c" / "b" / "f").read_text() == "x"
    assert sorted(os.listdir(vault.mnt)) == ["c"]
    assert os.stat(vault.mnt / "c").st_nlink == 3
    with pytest.raises(OSError) as err:
        os.rmdir(vault.mnt / "c")
    assert err.value.errno == errno.ENOTEMPTY
    vault.remount()
    assert (vault.mnt / "c" / "b" / "f").read_text() == "x"


def test_symlink_hardlink_chmod_xattr(vault: VaultHarness) -> None:
    f = vault.mnt / "f"
    f.write_text("content")
    os.symlink("f", vault.mnt / "l")
    assert os.readlink(vault.mnt / "l") == "f"
    assert (vault.mnt / "l").read_text() == "content"
    os.link(f, vault.mnt / "h")
    assert os.stat(f).st_nlink == 2
    assert os.stat(vault.mnt / "h").st_ino == os.stat(f).st_ino
    os.chmod(f, 0o600)
    assert stat.S_IMODE(os.stat(vault.mnt / "h").st_mode) == 0o600
    os.setxattr(f, "user.color", b"blue")
    assert os.getxattr(vault.mnt / "h", "user.color") == b"blue"
    assert "user.color" in os.listxattr(f)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    vault.remount()
    assert os.stat(f).st_mtime_ns == 2_000_000_000
    assert os.readlink(vault.mnt / "l") == "f"
    assert os.getxattr(f, "user.color") == b"blue"
    os.unlink(f)
    assert (vault.mnt / "h").read_text() == "content"
    assert os.stat(vault.mnt / "h").st_nlink == 1


@pytest.mark.parametrize(
    "pattern", ["sequential", "backwards", "append", "rewrite-tail", "sparse"]
)
def test_recorded_cid_is_the_stream_cid_whatever_the_write_order(
    vault: VaultHarness, pattern: str
) -> None:
    import json

    from jwtfs.blocks.unixfs import build_dag_from_file

    p = vault.mnt / f"f-{pattern}"
    block = os.urandom(65536 * 3 + 17)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if pattern == "sequential":
            for _ in range(5):
                os.write(fd, block)
        elif pattern == "backwards":
            for k in reversed(range(5)):
                os.pwrite(fd, block, k * len(block))
        elif pattern == "append":
            for _ in range(5):
                os.write(fd, block)
                os.fsync(fd)
        elif pattern == "rewrite-tail":
            os.write(fd, block * 5)
            os.fsync(fd)
            os.pwrite(fd, b"tail", 5 * len(block) - 2)
        else:
            os.pwrite(fd, block, 10 * len(block))
    finally:
        os.close(fd)
    rows = json.loads(vault.jwtfs("index", "--json").stdout)
    cid = next(r["cid"] for r in rows if r["path"] == f"/f-{pattern}")
    stream = vault.data_dir / "store" / "streams" / cid[-2:] / cid
    assert str(build_dag_from_file(stream).root) == cid
