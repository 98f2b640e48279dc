"""A node naming another CID than jwtfs computed: the version fails, stays local;
a snapshot is not recorded, and nothing the node named is unpinned."""

from __future__ import annotations

import json
import random
import time

import pytest

from jwtfs.blocks.cid import Cid
from jwtfs.remote.kubo import KuboClient
from tests.harness import VaultHarness
from tests.ipfs.fakes import WRONG_CID, TamperingProxy

SMALL = b"kept locally\n"
# Large enough to be uploaded while it is written, when that is on.
LARGE = random.Random(5).randbytes(6 * 1024 * 1024)


@pytest.mark.parametrize(
    ("content", "upload"),
    [(SMALL, False), (LARGE, True)],
    ids=["pushed-after-close", "uploaded-while-written"],
)
def test_a_cid_mismatch_marks_the_version_failed_and_keeps_it(
    ipfs_api: str, fresh_vault: VaultHarness, content: bytes, upload: bool
) -> None:
    h = fresh_vault
    with TamperingProxy(ipfs_api, wrong_add_cid=True) as proxy:
        h.set_config("ipfs", "api", proxy.url)
        h.set_config("ipfs", "upload_while_writing", upload)
        h.set_token(h.issue(read=("/**",), write=("/**",)))
        h.mount()
        (h.mnt / "f.txt").write_bytes(content)
        flushed = h.jwtfs("flush", "--wait", "--timeout", "30", check=False)
        report = json.loads(h.jwtfs("status", "--json").stdout)
        rows = json.loads(h.jwtfs("index", "--json").stdout)
        h.umount()
    cid = next(r["cid"] for r in rows if r["path"] == "/f.txt")
    assert proxy.tampered >= 1
    assert flushed.returncode == 1
    assert "1 version could not be pinned" in flushed.stderr
    assert report["states"].get("failed") == 1
    failed = [f for f in report["failed"] if f["cid"] == cid]
    assert failed and failed[0]["reason"] == f"node computed {WRONG_CID}"
    errors = h.log_lines("ERROR")
    mismatch = [line for line in errors if cid in line and WRONG_CID in line]
    assert len(mismatch) == 1, errors
    h.mount()
    assert (h.mnt / "f.txt").read_bytes() == content


def _snapshot_of(h: VaultHarness) -> str | None:
    snapshot = json.loads(h.jwtfs("status", "--json").stdout)["snapshot"]
    return None if snapshot is None else str(snapshot["cid"])


def _wait_for(what: str, check: object, timeout: float = 30.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.log_ok
async def test_a_snapshot_cid_named_wrongly_is_not_recorded_and_unpins_nothing(
    ipfs_api: str,
    fresh_vault: VaultHarness,
    kubo: KuboClient,
    unpin_after: list[Cid],
) -> None:
    h = fresh_vault
    with TamperingProxy(ipfs_api) as proxy:
        h.set_config("ipfs", "api", proxy.url)
        h.set_config("backup", "interval", 1)
        h.set_token(h.issue(read=("/**",), write=("/**",)))
        h.mount()
        (h.mnt / "a.txt").write_bytes(SMALL)
        h.wait_pinned()
        rows = json.loads(h.jwtfs("index", "--json").stdout)
        file_cid = next(r["cid"] for r in rows if r["path"] == "/a.txt")
        unpin_after.append(Cid(file_cid))
        _wait_for("a first snapshot", lambda: _snapshot_of(h) is not None)
        first = _snapshot_of(h)

        # The node now names the file's CID for everything it is given.
        proxy.add_cid = file_cid
        (h.mnt / "b.txt").write_bytes(b"b\n")
        _wait_for("a snapshot answer", lambda: proxy.tampered >= 2)
        time.sleep(2)
        assert _snapshot_of(h) == first

        proxy.add_cid = None
        (h.mnt / "c.txt").write_bytes(b"c\n")
        _wait_for("a new snapshot", lambda: _snapshot_of(h) not in (None, first))
        h.umount()
    assert await kubo.pin_ls(Cid(file_cid)) == {Cid(file_cid)}
    mismatch = [line for line in h.log_lines("ERROR") if "snapshot" in line]
    assert mismatch and file_cid in mismatch[0], h.log_lines("ERROR")
