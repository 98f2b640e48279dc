"""A node naming another CID than jwtfs computed: the version fails, stays local."""

from __future__ import annotations

import json
import random

import pytest

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
        h.jwtfs("flush", "--wait", "--timeout", "30")
        report = json.loads(h.jwtfs("status", "--json").stdout)
        rows = json.loads(h.jwtfs("index", "--json").stdout)
        h.umount()
    cid = next(r["cid"] for r in rows if r["path"] == "/f.txt")
    assert proxy.tampered >= 1
    assert report["states"].get("failed") == 1
    failed = [f for f in report["failed"] if f["cid"] == cid]
    assert failed and failed[0]["reason"] == f"node computed {WRONG_CID}"
    errors = h.log_lines("ERROR")
    mismatch = [line for line in errors if cid in line and WRONG_CID in line]
    assert len(mismatch) == 1, errors
    h.mount()
    assert (h.mnt / "f.txt").read_bytes() == content
