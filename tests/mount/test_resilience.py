"""CASE-13: an unexpected exception in a handler fails one request, not the mount.

The daemon runs through ``tests/mount/fault_runner.py``: the real daemon with
a ``getattr`` that raises ``RuntimeError`` once for one file name.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import VaultHarness

REPO = Path(__file__).resolve().parents[2]
CONTENT = b"still here\n"
# Entries and attributes are cached for one second (CACHE_TIMEOUT); after that
# an fstat on an open descriptor asks the daemon with GETATTR.
ATTR_EXPIRY_WAIT = 1.3


class FaultMount:
    """A fault_runner daemon serving ``vault``'s mountpoint."""

    def __init__(self, vault: VaultHarness, mode: str) -> None:
        self.vault = vault
        self.log_path = vault.root / "fault.log"
        read_end, write_end = os.pipe()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.mount.fault_runner",
                    str(vault.mnt),
                    "--token-file",
                    str(vault.token_file),
                    "--ready-fd",
                    str(write_end),
                    "--fault-name",
                    "victim",
                    "--mode",
                    mode,
                ],
                cwd=REPO,
                env=vault.env,
                pass_fds=(write_end,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read(6)
        assert answer == b"READY\n", self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.vault.jwtfs("umount", str(self.vault.mnt), check=False)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.ismount(self.vault.mnt):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.vault.mnt)], check=False
            )


@pytest.fixture
def prepared(fresh_vault: VaultHarness) -> VaultHarness:
    vault = fresh_vault
    vault.set_token(vault.issue(read=("/**",), write=("/**",)))
    vault.mount()
    (vault.mnt / "victim").write_bytes(CONTENT)
    (vault.mnt / "bystander").write_bytes(b"b")
    vault.umount()
    return vault


@pytest.fixture(params=["inner", "handler"])
def faulty(
    prepared: VaultHarness, request: pytest.FixtureRequest
) -> Iterator[FaultMount]:
    mount = FaultMount(prepared, request.param)
    try:
        yield mount
    finally:
        mount.stop()


def test_case_13_handler_exception_gives_eio_once(faulty: FaultMount) -> None:
    mnt = faulty.vault.mnt
    victim = mnt / "victim"
    ino = os.stat(victim).st_ino
    fd = os.open(victim, os.O_RDONLY)
    try:
        time.sleep(ATTR_EXPIRY_WAIT)
        with pytest.raises(OSError) as err:
            os.fstat(fd)
        assert err.value.errno == errno.EIO
        st = os.fstat(fd)
        assert (st.st_ino, st.st_size) == (ino, len(CONTENT))
        assert os.pread(fd, 100, 0) == CONTENT
    finally:
        os.close(fd)

    assert faulty.proc.poll() is None, faulty.log()
    assert os.path.ismount(mnt)
    assert sorted(os.listdir(mnt)) == ["bystander", "victim"]
    assert victim.read_bytes() == CONTENT
    assert os.stat(mnt / "bystander").st_size == 1
    (mnt / "after").write_bytes(b"new")
    assert (mnt / "after").read_bytes() == b"new"

    log = faulty.log()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: injected fault in getattr" in log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert "getattr" in errors[0]
