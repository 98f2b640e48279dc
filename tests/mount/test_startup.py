"""A daemon that fails after attaching the mount, before it reports ready.

Such a failure must detach the mount before the daemon exits: a mount left
attached without its daemon answers every access with ENOTCONN ("Transport
endpoint is not connected") and makes the next ``jwtfs mount`` refuse.

The failure is produced for real: the daemon writes its mount record (in
``$XDG_RUNTIME_DIR/jwtfs/``) only once the mount is attached, and a directory
standing where that file goes makes the write fail.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.harness import VaultHarness, one_line_error


def block_the_record(h: VaultHarness) -> Path:
    """Put a directory where the daemon writes the mount's record."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(h.mnt))).hexdigest()[:16]
    record = h.runtime / "jwtfs" / f"mount-{digest}.json"
    record.mkdir(parents=True)
    return record


@pytest.mark.parametrize("foreground", [False, True])
def test_a_failure_after_mounting_detaches_the_mount(
    fresh_vault: VaultHarness, foreground: bool
) -> None:
    h = fresh_vault
    h.set_token(h.issue(read=("/**",), write=("/**",)))
    record = block_the_record(h)
    args = ["mount", str(h.mnt), "--token-file", str(h.token_file)]
    if foreground:
        args.append("--foreground")

    result = h.jwtfs(*args, check=False, timeout=60)
    assert not h.attached()
    assert os.listdir(h.mnt) == []
    if foreground:
        # The daemon's own INFO lines come first on stderr.
        assert result.returncode == 2, result.stderr
        last = result.stderr.splitlines()[-1]
        assert last.startswith(f"jwtfs: {record}: cannot record the mount"), last
    else:
        one_line_error(result, str(record), "cannot record the mount")
    assert "Traceback" not in result.stderr + h.log_text()

    record.rmdir()
    h.mount()
    (h.mnt / "f").write_text("served\n")
    assert h.attached()
    h.umount()
    assert not h.attached()
