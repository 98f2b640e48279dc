"""SIGTERM or ``jwtfs umount`` while files are open and being written.

The daemon stops serving, commits what open files hold (closed, fsync'd and
unsynced data alike), unmounts and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from tests.harness import VaultHarness


def _wait_gone(pid: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "daemon did not exit"


def test_umount_commits_unsynced_data_of_open_files(vault: VaultHarness) -> None:
    closed = vault.mnt / "closed.txt"
    closed.write_bytes(b"closed before\n")
    synced = os.open(vault.mnt / "synced.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(synced, b"s" * 70_000)
    os.fsync(synced)
    writer = os.open(vault.mnt / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    unsynced = os.urandom(300_000)
    os.write(writer, unsynced)
    appended = os.open(vault.mnt / "closed.txt", os.O_WRONLY | os.O_APPEND)
    os.write(appended, b"appended, never closed\n")
    os.write(synced, b"t" * 10)

    vault.jwtfs("umount", str(vault.mnt))
    for fd in (synced, writer, appended):
        with contextlib.suppress(OSError):
            os.close(fd)
    assert not os.path.ismount(vault.mnt)

    vault.mount()
    assert (vault.mnt / "open.bin").read_bytes() == unsynced
    assert closed.read_bytes() == b"closed before\nappended, never closed\n"
    assert (vault.mnt / "synced.bin").read_bytes() == b"s" * 70_000 + b"t" * 10


def test_sigterm_exits_zero_after_committing(fresh_vault: VaultHarness) -> None:
    h = fresh_vault
    h.set_token(h.issue(read=("/**",), write=("/**",)))
    h.mount()
    pid = h.daemon_pid()
    fd = os.open(h.mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"pending\n")
    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid)
    with contextlib.suppress(OSError):
        os.close(fd)
    assert not os.path.ismount(h.mnt)
    log = h.log_text()
    assert "SIGTERM received; committing and unmounting" in log
    assert f"unmounted {h.mnt}" in log
    h.mount()
    assert (h.mnt / "f").read_bytes() == b"pending\n"
