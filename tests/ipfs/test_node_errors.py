"""A node that answers with errors or names wrong CIDs: no version is given up.

The node here is the real test node behind ``TamperingProxy``, a tampering
transport standing in for a node whose disk is full or that chunks
differently, faults the real node cannot be made to show on demand.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from jwtfs.blocks.cid import Cid
from jwtfs.remote.kubo import KuboClient
from tests.harness import VaultHarness
from tests.ipfs.fakes import WRONG_CID, SilentNode, TamperingProxy, TricklingNode
from tests.ipfs.test_pinning import index_of, poll, status_of

pytestmark = pytest.mark.log_ok


def _mounted_behind(proxy: TamperingProxy, h: VaultHarness) -> None:
    h.set_config("ipfs", "api", proxy.url)
    h.set_token(h.issue(read=("/**",), write=("/**",)))
    h.mount()


def _state(h: VaultHarness, path: str) -> str:
    return str(index_of(h)[path]["state"])


async def test_error_answers_show_failed_then_pin_once_the_node_recovers(
    ipfs_api: str, fresh_vault: VaultHarness, kubo: KuboClient, unpin_after: list[Cid]
) -> None:
    h = fresh_vault
    with TamperingProxy(ipfs_api) as proxy:
        proxy.fail_adds = True
        _mounted_behind(proxy, h)
        (h.mnt / "f.txt").write_bytes(b"waits for a node with room\n")
        poll("the version shows failed", lambda: _state(h, "/f.txt") == "failed", 30)
        (failed,) = status_of(h)["failed"]
        assert "no space left on device" in failed["reason"]
        assert failed["path"] == "/f.txt"
        line = next(
            ln for ln in h.jwtfs("status").stdout.splitlines() if "failed " in ln
        )
        assert line.startswith(f"failed     /f.txt {failed['cid']}: ")

        # No flush, no remount: the retry comes by itself.
        proxy.fail_adds = False
        poll("pinned after the recovery", lambda: _state(h, "/f.txt") == "pinned", 30)
        h.umount()
    cid = Cid(index_of(h)["/f.txt"]["cid"])
    unpin_after.append(cid)
    assert await kubo.pin_ls(cid) == {cid}
    errors = h.log_lines("ERROR")
    assert len([line for line in errors if str(cid) in line]) == 1, errors


async def test_flush_retries_a_version_the_node_named_wrongly(
    ipfs_api: str, fresh_vault: VaultHarness, kubo: KuboClient, unpin_after: list[Cid]
) -> None:
    h = fresh_vault
    with TamperingProxy(ipfs_api, wrong_add_cid=True) as proxy:
        _mounted_behind(proxy, h)
        (h.mnt / "f.txt").write_bytes(b"pushed again when asked\n")
        poll("the version shows failed", lambda: _state(h, "/f.txt") == "failed", 30)
        cid = index_of(h)["/f.txt"]["cid"]
        # Not retried by itself: the node would name the wrong CID again.
        time.sleep(3)
        assert proxy.added.count(cid) == 1

        # Asked again while the node still names it wrongly: flush says so.
        again = h.jwtfs("flush", "--wait", "--timeout", "30", check=False)
        assert again.returncode == 1
        assert again.stderr.splitlines()[-1] == (
            "jwtfs: 1 version could not be pinned; 'jwtfs status' says why"
        )
        assert proxy.added.count(cid) == 2

        proxy.add_cid = None
        h.wait_pinned()
        assert _state(h, "/f.txt") == "pinned"
        h.umount()
    unpin_after.append(Cid(cid))
    assert await kubo.pin_ls(Cid(cid)) == {Cid(cid)}
    report = json.loads(h.jwtfs("status", "--json").stdout)
    assert report["failed"] == []
    assert WRONG_CID not in {str(c) for c in await kubo.pin_ls()}


def test_a_node_that_trickles_its_answer_cannot_hold_the_queue(
    fresh_vault: VaultHarness,
) -> None:
    h = fresh_vault
    with TricklingNode(interval=0.5, head_at_once=True) as node:
        h.set_config("ipfs", "api", node.url)
        h.set_config("ipfs", "timeout", 2)
        h.set_token(h.issue(read=("/**",), write=("/**",)))
        h.mount()
        (h.mnt / "f.txt").write_bytes(b"waits for a node that finishes\n")

        def given_up() -> bool:
            return any("add" in line for line in h.log_lines("WARNING"))

        poll("the push given up", given_up, 30)
        assert node.requests >= 1
        assert _state(h, "/f.txt") in ("queued", "pinning")
        h.umount()


def test_files_released_while_they_are_pushed_leave_the_mount_serving(
    vault_on_node: VaultHarness,
) -> None:
    h = vault_on_node
    h.set_config("retention", "keep_versions", 0)
    h.set_config("retention", "keep_for", 0)
    h.mount()
    # A lock file made and removed at once, as git and editors do: each of
    # its versions is released while the pin queue may be pushing it.
    script = (
        'for i in $(seq 1500); do echo "$i" > "$1/lock" || exit 1; rm "$1/lock"; done'
    )
    done = subprocess.run(
        ["bash", "-c", script, "bash", str(h.mnt)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (h.mnt / "after").write_bytes(b"still serving\n")
    h.wait_pinned()
    assert (h.mnt / "after").read_bytes() == b"still serving\n"
    assert "Traceback" not in h.log_text()


def test_flush_names_a_node_that_never_answers_at_once(
    fresh_vault: VaultHarness,
) -> None:
    h = fresh_vault
    with SilentNode() as node:
        h.set_config("ipfs", "api", node.url)
        h.set_token(h.issue(read=("/**",), write=("/**",)))
        h.mount()
        (h.mnt / "f.txt").write_bytes(b"waits\n")
        started = time.monotonic()
        flushed = h.jwtfs("flush", "--wait", "--timeout", "5", check=False)
        elapsed = time.monotonic() - started
        h.umount()
    assert flushed.returncode == 1
    first = flushed.stderr.splitlines()[0]
    assert first.startswith("jwtfs: the IPFS node is not answering"), flushed.stderr
    assert elapsed < 15
