"""allow_other on: the kernel passes another user's requests on, and jwtfs refuses them.

Tokens belong to the mounting user, so another uid gets the mount root's own
attributes and statfs, and EACCES for everything else, each refusal logged.
(With allow_other off the kernel refuses them: see test_scope_attacks.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import VaultHarness

AS_OTHER = ["setpriv", "--reuid", "1234", "--regid", "1234", "--clear-groups"]


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[VaultHarness]:
    h = VaultHarness(tmp_path / "v")
    h.init()
    h.set_token(h.issue(read=("/**",), write=("/**",)))
    # The other uid must be able to reach the mountpoint on its way down.
    for parent in [h.mnt, *h.mnt.parents]:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    h.mount("--allow-other")
    (h.mnt / "doc").write_text("the owner's\n")
    (h.mnt / "doc").chmod(0o644)
    yield h
    h.cleanup()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another uid")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_another_uid_gets_only_the_root_attributes(shared: VaultHarness) -> None:
    m = shared.mnt
    assert subprocess.run([*AS_OTHER, "stat", "-c", "%i", str(m)]).returncode == 0
    assert subprocess.run([*AS_OTHER, "stat", "-f", str(m)]).returncode == 0
    for command in (["ls", f"{m}/"], ["cat", f"{m}/doc"], ["touch", f"{m}/new"]):
        theirs = subprocess.run([*AS_OTHER, *command], capture_output=True, text=True)
        assert theirs.returncode != 0, command
        assert "Permission denied" in theirs.stderr, theirs.stderr
    assert not (m / "new").exists()
    assert (m / "doc").read_text() == "the owner's\n"
    denials = [line for line in shared.log_text().splitlines() if "uid 1234" in line]
    assert denials and all("not the mount's owner" in line for line in denials)
