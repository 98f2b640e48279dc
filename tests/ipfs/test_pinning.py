"""Pinned to IPFS: what a mounted vault promises about its node, on real mounts.

Every vault here pins to a real node on loopback: the session node
(``ipfs_api``), or a private one this module stops and starts. Bad nodes are
the named fakes of ``fakes.py``. Content is evicted either by the daemon's own
maintenance (one test waits for it) or by ``VaultHarness.drop_local_cache``,
which runs the same eviction while the vault is unmounted.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jwtfs.blocks.car import read_car
from jwtfs.blocks.cid import Cid
from jwtfs.remote.kubo import KuboClient
from jwtfs.vault.pins import MAINTENANCE_SECONDS
from tests.conftest import needs_fuse
from tests.harness import VaultHarness, new_vault
from tests.ipfs.fakes import PrivateNode, SilentNode, TamperingProxy

pytestmark = needs_fuse

MIB = 1024 * 1024
SEGMENT = 65536
STORED_SEGMENT = SEGMENT + 28
HEADER = 32
CHUNK = 262144
MARKER = b"jwtfs-plaintext-marker:"
# Time allowed past a configured timeout: a loaded CI machine, a kernel retry.
MARGIN = 2.0
FETCH_TIMEOUT = 3
# The daemon evicts every 30 s; a little more for the push before it.
EVICTION_WAIT = 45.0


def stream_length(size: int) -> int:
    """Bytes of the ciphertext stream of a ``size``-byte file (docs/FORMAT.md)."""
    full, rest = divmod(size, SEGMENT)
    return HEADER + full * STORED_SEGMENT + (rest + 28 if rest else 0)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def status_of(harness: VaultHarness) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(harness.jwtfs("status", "--json").stdout)
    return report


def index_of(harness: VaultHarness) -> dict[str, dict[str, Any]]:
    rows = json.loads(harness.jwtfs("index", "--json").stdout)
    return {row["path"]: row for row in rows}


def poll(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Wait until ``check()`` holds; return the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)
    return time.monotonic() - started


def export_car(harness: VaultHarness, path: str, car: Path) -> None:
    """``jwtfs export --car path > car``."""
    with car.open("wb") as out:
        subprocess.run(
            [sys.executable, "-m", "jwtfs", "export", "--car", path],
            env=harness.env,
            stdout=out,
            check=True,
            timeout=60,
        )


def read_error(path: Path, offset: int = 0, length: int = 4096) -> tuple[int, float]:
    """Read ``path`` expecting failure; return (errno, seconds it took)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.monotonic()
        try:
            data = os.pread(fd, length, offset)
        except OSError as err:
            return err.errno or 0, time.monotonic() - started
    finally:
        os.close(fd)
    raise AssertionError(f"read of {path} returned {len(data)} bytes, not an error")


@pytest.fixture
def vault_on_private_node(
    tmp_path: Path, private_node: PrivateNode
) -> Iterator[tuple[VaultHarness, PrivateNode]]:
    """A vault pinning to the private node, which runs when the test starts."""
    private_node.start()
    harness = new_vault(tmp_path, private_node.url)
    yield harness, private_node
    harness.cleanup()
    private_node.start()


def assert_quiet_log(harness: VaultHarness, *expected: str) -> None:
    """Every WARNING or ERROR line contains one of ``expected``."""
    bad = [
        line
        for line in harness.log_lines("WARNING", "ERROR", "CRITICAL")
        if not any(text in line for text in expected)
    ]
    assert bad == []


# Pinned and encrypted


@pytest.mark.parametrize("size", [len(MARKER), 5 * SEGMENT + 7])
async def test_flushed_file_is_pinned_on_the_node_as_ciphertext(
    vault_on_node: VaultHarness, kubo: KuboClient, unpin_after: list[Cid], size: int
) -> None:
    harness = vault_on_node
    harness.mount()
    data = (MARKER * (size // len(MARKER) + 1))[:size]
    (harness.mnt / "secret.txt").write_bytes(data)

    harness.wait_pinned()

    row = index_of(harness)["/secret.txt"]
    cid = Cid(row["cid"])
    unpin_after.append(cid)
    assert row == {"path": "/secret.txt", "size": size, "cid": cid, "state": "pinned"}
    path = harness.mnt / "secret.txt"
    assert os.getxattr(path, "user.jwtfs.cid") == cid.encode()
    assert os.getxattr(path, "user.jwtfs.pin") == b"pinned"
    assert await kubo.pin_ls(cid) == {cid}
    assert cid in await kubo.pin_ls()
    stored = await kubo.cat(cid, 0, stream_length(size) + 100)
    assert len(stored) == stream_length(size)
    assert stored == harness.stream_file(cid).read_bytes()
    assert MARKER not in stored
    report = status_of(harness)
    assert report["states"] == {"pinned": 1}
    assert report["backlog"] == {"files": 0, "versions": 0, "bytes": 0}
    assert report["left_machine"] is True
    assert report["node"]["reachable"] is True
    assert_quiet_log(harness)


# A node that is down


def write_files(mnt: Path, count: int, seed: int) -> dict[str, bytes]:
    files = {
        f"f{i:02}.bin": random_bytes(1000 + 7919 * i, seed + i) for i in range(count)
    }
    for name, data in files.items():
        (mnt / name).write_bytes(data)
    return files


def wait_unreachable(harness: VaultHarness) -> dict[str, Any]:
    reports: list[dict[str, Any]] = []

    def seen() -> bool:
        reports.append(status_of(harness))
        return bool(reports[-1]["node"].get("last_seen_state") == "unreachable")

    poll("the daemon notices the node is down", seen, 15)
    return reports[-1]


def wait_all_pinned(harness: VaultHarness, count: int, timeout: float) -> float:
    def pinned() -> bool:
        return bool(status_of(harness)["states"] == {"pinned": count})

    return poll(f"{count} versions pinned", pinned, timeout)


@pytest.mark.log_ok
async def test_writes_queue_while_the_node_is_down_and_pin_when_it_returns(
    vault_on_private_node: tuple[VaultHarness, PrivateNode],
) -> None:
    harness, node = vault_on_private_node
    harness.mount()
    (harness.mnt / "before.txt").write_bytes(b"before the node stopped\n")
    harness.wait_pinned()
    node.stop()

    files = write_files(harness.mnt, 20, seed=100)

    report = wait_unreachable(harness)
    assert report["states"] == {"pinned": 1, "queued": 20}
    assert report["backlog"] == {
        "files": 20,
        "versions": 20,
        "bytes": sum(stream_length(len(d)) for d in files.values()),
    }
    assert report["node"]["reachable"] is False
    for name, data in files.items():
        assert (harness.mnt / name).read_bytes() == data
        assert os.getxattr(harness.mnt / name, "user.jwtfs.pin") == b"queued"

    node.start()
    wait_all_pinned(harness, 21, timeout=30)

    cids = {Cid(row["cid"]) for row in index_of(harness).values()}
    async with KuboClient(node.url) as client:
        assert cids <= await client.pin_ls()
    assert status_of(harness)["node"]["last_seen_state"] == "reachable"
    unreachable = harness.log_lines("WARNING")
    assert len(unreachable) == 1
    assert "IPFS node unreachable" in unreachable[0]
    assert harness.log_lines("ERROR") == []


@pytest.mark.log_ok
async def test_the_queue_survives_a_daemon_restart_while_the_node_is_down(
    vault_on_private_node: tuple[VaultHarness, PrivateNode],
) -> None:
    harness, node = vault_on_private_node
    harness.mount()
    node.stop()
    files = write_files(harness.mnt, 20, seed=200)
    wait_unreachable(harness)

    harness.remount()

    report = status_of(harness)
    assert report["states"] == {"queued": 20}
    assert report["backlog"]["versions"] == 20
    assert report["backlog"]["files"] == 20
    node.start()
    wait_all_pinned(harness, 20, timeout=30)
    cids = {Cid(row["cid"]) for row in index_of(harness).values()}
    assert len(cids) == 20
    async with KuboClient(node.url) as client:
        assert cids <= await client.pin_ls()
    for name, data in files.items():
        assert (harness.mnt / name).read_bytes() == data
    assert harness.log_lines("ERROR") == []


# Evicted content


def boundary_ranges(size: int) -> list[tuple[int, int]]:
    """Byte ranges around every segment and chunk boundary and the end."""
    offsets = {0, size - 1}
    for i in range(1, size // SEGMENT + 1):
        offsets.update((i * SEGMENT - 1, i * SEGMENT))
    for k in range(1, stream_length(size) // CHUNK + 1):
        # The plaintext byte stored nearest to stream byte k * CHUNK.
        segment, within = divmod(k * CHUNK - HEADER, STORED_SEGMENT)
        offsets.add(segment * SEGMENT + min(max(within - 12, 0), SEGMENT - 1))
    ranges = [(max(0, p - 3), 7) for p in sorted(offsets) if 0 <= p < size]
    ranges += [
        (SEGMENT - 10, 2 * SEGMENT + 20),
        (CHUNK - 5000, 10000),
        (size - 10, 100),
        (size, 10),
        (0, size),
    ]
    return ranges


def check_ranges(path: Path, data: bytes) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        ranges = boundary_ranges(len(data))
        for offset, length in ranges:
            assert os.pread(fd, length, offset) == data[offset : offset + length], (
                offset,
                length,
            )
    finally:
        os.close(fd)
    return len(ranges)


async def test_content_evicted_by_the_daemon_reads_back_exactly(
    vault_on_node: VaultHarness, unpin_after: list[Cid]
) -> None:
    harness = vault_on_node
    harness.set_config("cache", "max_size", "1")
    harness.mount()
    files = {
        "exact.bin": random_bytes(3 * MIB, 1),
        "odd.bin": random_bytes(3 * MIB + 777, 2),
    }
    for name, data in files.items():
        (harness.mnt / name).write_bytes(data)
    harness.wait_pinned()
    rows = index_of(harness)
    unpin_after.extend(Cid(row["cid"]) for row in rows.values())

    streams = [harness.stream_file(row["cid"]) for row in rows.values()]
    assert all(stream.exists() for stream in streams)
    poll("eviction", lambda: not any(s.exists() for s in streams), EVICTION_WAIT)
    assert [row["state"] for row in index_of(harness).values()] == ["pinned"] * 2
    harness.remount()  # a new mount starts with an empty page cache

    for name, data in files.items():
        assert check_ranges(harness.mnt / name, data) > 60
        digest = hashlib.sha256((harness.mnt / name).read_bytes()).digest()
        assert digest == hashlib.sha256(data).digest()
    assert_quiet_log(harness)


def evicted_file(harness: VaultHarness, data: bytes) -> str:
    """Mount, write ``/file``, pin it, unmount and evict it; return its CID."""
    harness.mount()
    (harness.mnt / "file").write_bytes(data)
    harness.wait_pinned()
    cid: str = index_of(harness)["/file"]["cid"]
    harness.umount()
    assert harness.drop_local_cache() == 1
    assert not harness.stream_file(cid).exists()
    return cid


def assert_index_answers(harness: VaultHarness, size: int) -> None:
    """``stat``, a listing and ``ls -l`` answer from the index."""
    assert (harness.mnt / "file").stat().st_size == size
    assert os.listdir(harness.mnt) == ["file"]
    listing = subprocess.run(
        ["timeout", "30", "ls", "-l", str(harness.mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert f" {size} " in listing.stdout


def assert_one_error_naming(harness: VaultHarness, cid: str) -> None:
    """The failed fetch was logged once, at ERROR, with the stream's CID."""
    errors = harness.log_lines("ERROR")
    assert len(errors) == 1, errors
    assert cid in errors[0]


def timed_umount(harness: VaultHarness) -> float:
    started = time.monotonic()
    harness.umount()
    return time.monotonic() - started


@pytest.mark.log_ok
async def test_evicted_read_with_the_node_stopped_fails_fast_with_eio(
    vault_on_private_node: tuple[VaultHarness, PrivateNode],
) -> None:
    harness, node = vault_on_private_node
    data = random_bytes(3 * SEGMENT, 3)
    cid = evicted_file(harness, data)
    node.stop()
    harness.mount()

    assert_index_answers(harness, len(data))
    code, elapsed = read_error(harness.mnt / "file")

    assert code == errno.EIO
    assert elapsed < MARGIN
    assert_index_answers(harness, len(data))
    assert timed_umount(harness) < MARGIN
    assert_one_error_naming(harness, cid)


@pytest.mark.log_ok
async def test_evicted_read_from_a_silent_node_fails_within_the_fetch_timeout(
    vault_on_node: VaultHarness,
) -> None:
    harness = vault_on_node
    data = random_bytes(3 * SEGMENT, 4)
    cid = evicted_file(harness, data)
    with SilentNode() as fake:
        harness.set_config("ipfs", "api", fake.url)
        harness.set_config("ipfs", "fetch_timeout", FETCH_TIMEOUT)
        harness.mount()

        assert_index_answers(harness, len(data))
        code, elapsed = read_error(harness.mnt / "file")

        assert code == errno.EIO
        assert fake.accepted >= 1
        assert_index_answers(harness, len(data))
        assert timed_umount(harness) < MARGIN
    assert FETCH_TIMEOUT - 0.5 <= elapsed < FETCH_TIMEOUT + MARGIN
    assert_one_error_naming(harness, cid)


@pytest.mark.log_ok
async def test_unmount_with_a_read_waiting_on_a_silent_node_does_not_hang(
    vault_on_node: VaultHarness,
) -> None:
    harness = vault_on_node
    evicted_file(harness, random_bytes(2 * SEGMENT, 5))
    with SilentNode() as fake:
        harness.set_config("ipfs", "api", fake.url)
        harness.set_config("ipfs", "fetch_timeout", 20)
        harness.mount()
        outcome: list[int] = []

        def reader() -> None:
            fd = os.open(harness.mnt / "file", os.O_RDONLY)
            try:
                os.pread(fd, 4096, 0)
            except OSError as err:
                outcome.append(err.errno or 0)
            # Closing after the unmount fails (ENOTCONN); the read is what counts.
            with contextlib.suppress(OSError):
                os.close(fd)

        thread = threading.Thread(target=reader)
        thread.start()
        poll("the read reaches the fake", lambda: fake.accepted >= 1, 10)

        elapsed = timed_umount(harness)
        thread.join(timeout=30)

    assert elapsed < 5.0
    assert not thread.is_alive()
    # The read was cut short by the unmount, or by the node's silence.
    assert len(outcome) == 1
    assert outcome[0] in (errno.ENOTCONN, errno.EIO)


@pytest.mark.log_ok
async def test_tampered_blocks_from_the_node_give_eio_never_wrong_plaintext(
    vault_on_node: VaultHarness, ipfs_api: str, unpin_after: list[Cid]
) -> None:
    harness = vault_on_node
    harness.mount()
    files = {"small": random_bytes(1000, 6), "large": random_bytes(9 * SEGMENT + 5, 7)}
    for name, data in files.items():
        (harness.mnt / name).write_bytes(data)
    harness.wait_pinned()
    cids = {name[1:]: row["cid"] for name, row in index_of(harness).items()}
    unpin_after.extend(Cid(cid) for cid in cids.values())
    harness.umount()
    assert harness.drop_local_cache() == 2

    with TamperingProxy(ipfs_api) as proxy:
        harness.set_config("ipfs", "api", proxy.url)
        harness.mount()
        for name, data in files.items():
            for offset in (0, len(data) // 2, len(data) - 1):
                code, _ = read_error(harness.mnt / name, offset, 4096)
                assert code == errno.EIO, (name, offset)
        assert proxy.tampered >= 2
        harness.umount()

    errors = harness.log_lines("ERROR")
    harness.set_config("ipfs", "api", ipfs_api)
    harness.mount()
    for name, data in files.items():
        assert (harness.mnt / name).read_bytes() == data
    for cid in cids.values():
        lines = [line for line in errors if cid in line]
        assert lines != [], errors
        assert all("does not match its CID" in line for line in lines), lines


# Export


async def test_exported_car_imports_into_the_node_under_the_same_root(
    tmp_path: Path, kubo: KuboClient, unpin_after: list[Cid]
) -> None:
    harness = VaultHarness(tmp_path)
    harness.init()  # no node: the node sees this content first through the CAR
    harness.set_token(harness.issue(read=("/**",), write=("/**",)))
    try:
        harness.mount()
        data = random_bytes(5 * CHUNK + 99, 8)
        (harness.mnt / "f").write_bytes(data)
        harness.umount()
        row = index_of(harness)["/f"]
        assert row["state"] == "local"
        cid = Cid(row["cid"])
        car = tmp_path / "f.car"
        export_car(harness, "/f", car)
        assert await kubo.pin_ls(cid) == set()

        assert await kubo.dag_import(car) == [cid]

        unpin_after.append(cid)
        assert await kubo.pin_ls(cid) == {cid}
        stream = harness.stream_file(cid).read_bytes()
        assert len(stream) == stream_length(len(data))
        assert await kubo.cat(cid, 0, len(stream)) == stream
    finally:
        harness.cleanup()


async def test_exporting_evicted_content_fetches_it_from_the_node(
    vault_on_node: VaultHarness, kubo: KuboClient, unpin_after: list[Cid]
) -> None:
    harness = vault_on_node
    harness.mount()
    data = random_bytes(3 * CHUNK + 7, 9)
    (harness.mnt / "f").write_bytes(data)
    harness.wait_pinned()
    cid = Cid(index_of(harness)["/f"]["cid"])
    unpin_after.append(cid)
    harness.umount()
    assert harness.drop_local_cache() == 1

    refused = harness.jwtfs(
        "export", "--car", "/f", check=False, env={"IPFS_API": "none"}
    )
    assert refused.returncode != 0
    assert refused.stdout == ""
    assert refused.stderr.count("\n") == 1
    assert "evicted" in refused.stderr and "ipfs.api" in refused.stderr

    car = harness.root / "f.car"
    export_car(harness, "/f", car)
    with car.open("rb") as src:
        roots, blocks = read_car(src)
    assert roots == [cid]
    assert len(blocks) == 5  # the root and four leaves
    stream = harness.stream_file(str(cid)).read_bytes()
    assert stream == await kubo.cat(cid, 0, len(stream))
    assert index_of(harness)["/f"]["state"] == "pinned"


def test_eviction_counts_only_the_streams_kept_for_versions_in_use(
    vault_on_private_node: tuple[VaultHarness, PrivateNode],
) -> None:
    harness, node = vault_on_private_node
    harness.set_config("cache", "max_size", "10M")
    harness.set_config("retention", "keep_versions", 0)
    harness.set_config("retention", "keep_for", 0)
    harness.mount()
    for name in ("a", "b", "c", "d"):
        size = 3 * MIB if name == "d" else 2 * MIB
        (harness.mnt / name).write_bytes(random_bytes(size, ord(name)))
    harness.wait_pinned()
    # With the node down, d's pinned version cannot be unpinned once a new
    # one replaces it; its local stream goes at once all the same.
    node.stop()
    try:
        for seed in range(2):
            (harness.mnt / "d").write_bytes(random_bytes(3 * MIB, 10 + seed))
        cids = {path: row["cid"] for path, row in index_of(harness).items()}
        # 9 MiB in use, under the limit.
        time.sleep(MAINTENANCE_SECONDS + 5)
        kept = {p: harness.stream_file(c).exists() for p, c in cids.items()}
        evicted = [ln for ln in harness.log_lines("INFO") if "evicted" in ln]
    finally:
        node.start()
    assert kept == {"/a": True, "/b": True, "/c": True, "/d": True}
    assert evicted == []
