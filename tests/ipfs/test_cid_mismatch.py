"""A node naming another CID than jwtfs computed: the version fails, stays local."""

from __future__ import annotations

import json

from tests.harness import VaultHarness
from tests.ipfs.fakes import WRONG_CID, TamperingProxy


def test_a_cid_mismatch_marks_the_version_failed_and_keeps_it(
    ipfs_api: str, fresh_vault: VaultHarness
) -> None:
    h = fresh_vault
    with TamperingProxy(ipfs_api, wrong_add_cid=True) as proxy:
        h.set_config("ipfs", "api", proxy.url)
        h.set_token(h.issue(read=("/**",), write=("/**",)))
        h.mount()
        (h.mnt / "f.txt").write_bytes(b"kept locally\n")
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
    assert (h.mnt / "f.txt").read_bytes() == b"kept locally\n"
