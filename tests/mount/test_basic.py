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
