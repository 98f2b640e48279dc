"""The IPFS cases of the shared case list, through real mounts and a real node.

CASE-17: empty files survive pinning, eviction and a remount. CASE-23: a
fetch nobody can answer fails with EIO within the fetch timeout, for a
stopped node, a closed port and a node that never answers. CASE-24: the
node's ``repo/gc`` never takes a current version, even while files are being
written, and superseded versions are unpinned after retention.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from jwtfs.blocks.cid import Cid
from jwtfs.remote.kubo import KuboClient
from tests.conftest import needs_fuse
from tests.harness import VaultHarness, new_vault
from tests.ipfs.fakes import PrivateNode, SilentNode, closed_loopback_port
from tests.ipfs.test_pinning import (
    MARGIN,
    SEGMENT,
    index_of,
    poll,
    random_bytes,
    status_of,
    stream_length,
)

pytestmark = needs_fuse

FETCH_TIMEOUT = 3
RETENTION_WAIT = 40.0


def run(*argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done, time.monotonic() - started


def wait_gone(pid: int, timeout: float) -> None:
    poll(f"daemon {pid} exits", lambda: not Path(f"/proc/{pid}").exists(), timeout)


def live_cids(harness: VaultHarness) -> set[Cid]:
    return {Cid(r["cid"]) for r in index_of(harness).values() if r["cid"] is not None}


# CASE-17


async def test_case_17_empty_files_survive_pinning_eviction_and_remount(
    vault_on_node: VaultHarness, kubo: KuboClient, tmp_path: Path
) -> None:
    harness = vault_on_node
    harness.mount()
    mnt = harness.mnt
    (tmp_path / "empty").write_bytes(b"")
    script = (
        'rsync -a "$SRC" "$MNT/" && : > "$MNT/e2" && cp /dev/null "$MNT/e3" && '
        "python3 -c \"open('$MNT/e4', 'w').close()\" && "
        'printf data > "$MNT/e5" && truncate -s 0 "$MNT/e5" && '
        'stat -c "%n %s" "$MNT"/empty "$MNT"/e2 "$MNT"/e3 "$MNT"/e4 "$MNT"/e5'
    )
    done = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, "MNT": str(mnt), "SRC": str(tmp_path / "empty")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    names = ["e2", "e3", "e4", "e5", "empty"]
    assert sorted(done.stdout.splitlines()) == [f"{mnt}/{n} 0" for n in names]

    harness.wait_pinned()
    rows = index_of(harness)
    assert sorted(rows) == [f"/{n}" for n in names]
    pins = await kubo.pin_ls()
    for row in rows.values():
        assert row["size"] == 0
        assert row["state"] == ("empty" if row["cid"] is None else "pinned"), row
        assert row["cid"] is None or Cid(row["cid"]) in pins
    assert rows["/e5"]["cid"] is not None  # it held data once: a version exists
    harness.umount()
    assert harness.drop_local_cache() >= 1
    harness.mount()

    assert sorted(os.listdir(mnt)) == names
    for name in names:
        assert (mnt / name).stat().st_size == 0
        assert (mnt / name).read_bytes() == b""


# CASE-23


@pytest.mark.log_ok
@pytest.mark.parametrize("variant", ["node_stopped", "closed_port", "silent_node"])
def test_case_23_fetching_content_nobody_has_fails_within_the_fetch_timeout(
    tmp_path: Path, ipfs_api: str, private_node: PrivateNode, variant: str
) -> None:
    private_node.start()
    api = private_node.url if variant == "node_stopped" else ipfs_api
    harness = new_vault(tmp_path, api)
    try:
        with SilentNode() as fake:
            check_unanswered_fetch(harness, private_node, fake, variant)
    finally:
        harness.cleanup()
        private_node.start()


def check_unanswered_fetch(
    harness: VaultHarness, node: PrivateNode, fake: SilentNode, variant: str
) -> None:
    data = random_bytes(3 * SEGMENT + 11, 23)
    harness.mount()
    (harness.mnt / "file").write_bytes(data)
    harness.wait_pinned()
    harness.umount()
    assert harness.drop_local_cache() == 1
    if variant == "node_stopped":
        node.stop()
    elif variant == "closed_port":
        harness.set_config("ipfs", "api", f"http://127.0.0.1:{closed_loopback_port()}")
    else:
        harness.set_config("ipfs", "api", fake.url)
    harness.set_config("ipfs", "fetch_timeout", FETCH_TIMEOUT)
    harness.mount()
    mnt = harness.mnt

    cat, elapsed = run("timeout", "120", "cat", str(mnt / "file"))
    assert cat.returncode == 1
    assert "Input/output error" in cat.stderr
    assert cat.stdout == ""
    assert elapsed < FETCH_TIMEOUT + MARGIN

    ls, elapsed = run("timeout", "30", "ls", "-l", str(mnt))
    assert ls.returncode == 0, ls.stderr
    assert f" {len(data)} " in ls.stdout
    assert elapsed < MARGIN
    (mnt / "written-while-down").write_bytes(b"kept locally, queued\n")
    assert (mnt / "written-while-down").read_bytes() == b"kept locally, queued\n"
    assert status_of(harness)["backlog"] == {
        "files": 1,
        "versions": 1,
        "bytes": stream_length(len(b"kept locally, queued\n")),
    }

    pid = harness.daemon_pid()
    umount, elapsed = run("timeout", "30", "fusermount3", "-u", str(mnt))
    assert umount.returncode == 0, umount.stderr
    wait_gone(pid, 10)
    assert elapsed < MARGIN
    assert not os.path.ismount(mnt)


# CASE-24


async def test_case_24_repo_gc_never_removes_a_current_version(
    vault_on_node: VaultHarness, kubo: KuboClient, unpin_after: list[Cid]
) -> None:
    harness = vault_on_node
    harness.mount()
    (harness.mnt / "p.txt").write_text("important\n")
    harness.wait_pinned()
    unpin_after.extend(live_cids(harness))

    await kubo.repo_gc()

    harness.umount()
    assert harness.drop_local_cache() == 1
    harness.mount()
    assert (harness.mnt / "p.txt").read_text() == "important\n"
    assert live_cids(harness) <= await kubo.pin_ls()


async def test_case_24_repo_gc_in_a_loop_while_50_files_are_written(
    vault_on_node: VaultHarness, kubo: KuboClient, unpin_after: list[Cid]
) -> None:
    harness = vault_on_node
    harness.mount()
    files = {f"g{i:02}.bin": random_bytes(1 + 9973 * i, 2400 + i) for i in range(50)}
    collections = 0

    def write_and_flush() -> None:
        for name, data in files.items():
            (harness.mnt / name).write_bytes(data)
        harness.wait_pinned()

    async def collect(done: trio.Event) -> None:
        nonlocal collections
        while not done.is_set():
            await kubo.repo_gc()
            collections += 1

    async with trio.open_nursery() as nursery:
        done = trio.Event()
        nursery.start_soon(collect, done)
        await trio.to_thread.run_sync(write_and_flush)
        done.set()

    cids = live_cids(harness)
    unpin_after.extend(cids)
    assert collections >= 2
    assert len(cids) == 50
    assert cids <= await kubo.pin_ls()
    await kubo.repo_gc()
    harness.umount()
    assert harness.drop_local_cache() == 50
    harness.mount()
    for name, data in files.items():
        assert (harness.mnt / name).read_bytes() == data, name


@pytest.mark.parametrize("keep_versions", [0, 1])
async def test_case_24_superseded_versions_are_unpinned_after_retention(
    vault_on_node: VaultHarness,
    kubo: KuboClient,
    unpin_after: list[Cid],
    keep_versions: int,
) -> None:
    harness = vault_on_node
    harness.set_config("retention", "keep_versions", keep_versions)
    harness.set_config("retention", "keep_for", 0)
    harness.mount()
    path = harness.mnt / "f.txt"
    path.write_bytes(b"version 1\n")
    harness.wait_pinned()
    cids = [Cid(index_of(harness)["/f.txt"]["cid"])]
    for version in (2, 3):
        # Rewritten in place: one new version per change, no truncation between.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, f"version {version}\n".encode(), 0)
        finally:
            os.close(fd)
        harness.wait_pinned()
        cids.append(Cid(index_of(harness)["/f.txt"]["cid"]))
    unpin_after.extend(cids)
    assert len(set(cids)) == 3
    kept = set(cids[2 - keep_versions :])

    async def settled(pinned: set[Cid]) -> bool:
        pins = await kubo.pin_ls()
        states = status_of(harness)["states"]
        # status counts the current version of each file, not the kept ones.
        wanted = {"pinned": 1} if pinned else {}
        return {c for c in cids if c in pins} == pinned and states == wanted

    for pinned in (kept, set()):
        started = time.monotonic()
        while not await settled(pinned):
            assert time.monotonic() - started < RETENTION_WAIT, f"left {pinned}"
            await trio.sleep(0.5)
        path.unlink(missing_ok=True)


async def test_a_file_emptied_again_keeps_the_pin_its_first_version_shared(
    vault_on_node: VaultHarness, kubo: KuboClient, unpin_after: list[Cid]
) -> None:
    harness = vault_on_node
    harness.set_config("retention", "keep_versions", 0)
    # Long enough that the first version is still kept when the third, with
    # the same stream, is pinned.
    harness.set_config("retention", "keep_for", 4)
    harness.mount()
    path = harness.mnt / "e"
    path.write_bytes(b"")
    harness.wait_pinned()
    empty = Cid(index_of(harness)["/e"]["cid"])
    path.write_bytes(b"some content\n")
    harness.wait_pinned()
    middle = Cid(index_of(harness)["/e"]["cid"])
    os.truncate(path, 0)
    harness.wait_pinned()
    # The file's empty stream has the same bytes, so the same CID, as before.
    assert Cid(index_of(harness)["/e"]["cid"]) == empty
    unpin_after.extend([empty, middle])

    started = time.monotonic()
    while await kubo.pin_ls(middle):
        assert time.monotonic() - started < RETENTION_WAIT, "never unpinned"
        await trio.sleep(0.5)
    await trio.sleep(1)
    (harness.mnt / "later").write_bytes(b"a change runs retention again\n")
    harness.wait_pinned()
    assert await kubo.pin_ls(empty) == {empty}
    await kubo.repo_gc()
    harness.umount()
    harness.drop_local_cache()
    harness.mount()
    assert path.read_bytes() == b""
    assert index_of(harness)["/e"]["state"] == "pinned"
