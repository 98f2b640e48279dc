"""Uploads during the write, on real mounts and a real node of this module's own.

With ``ipfs.upload_while_writing`` on, a file written front to back reaches the
node while it is still open; the node's block store is measured on disk to
show it. Every way that upload can be cut short (the writer goes back, the
file is deleted, the node stops, the writer pauses) must end in exactly the
pins a push after the close gives: the file's current CID, nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jwtfs.blocks.cid import RAW, Cid, cid_codec
from jwtfs.remote.kubo import KuboClient
from tests.conftest import needs_fuse
from tests.harness import VaultHarness, new_vault
from tests.ipfs.fakes import PrivateNode
from tests.ipfs.test_pinning import (
    MIB,
    assert_quiet_log,
    index_of,
    poll,
    random_bytes,
    status_of,
)

pytestmark = needs_fuse

# The upload gives up on a writer idle this long (jwtfs.vault.uploads).
IDLE_SECONDS = 10.0
PIN_TIMEOUT = 60.0


class MeasuredNode(PrivateNode):
    """A private node whose repository on disk can be measured."""

    def __init__(self, state: Path) -> None:
        super().__init__(state)
        self.state = state

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.state.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, ipfs_api: str
) -> Iterator[MeasuredNode]:
    """This module's own node; ``ipfs_api`` first, so the node is installed."""
    measured = MeasuredNode(tmp_path_factory.mktemp("upload-node"))
    try:
        measured.start()
        yield measured
    finally:
        measured.stop()


@pytest.fixture
def vault(tmp_path: Path, node: MeasuredNode) -> Iterator[VaultHarness]:
    """A vault uploading while it writes (the node is on loopback: set it on)."""
    node.start()
    harness = new_vault(tmp_path, node.url)
    harness.set_config("ipfs", "upload_while_writing", True)
    yield harness
    harness.cleanup()
    node.start()


def wait_node_grows(node: MeasuredNode, before: int, by: int) -> None:
    poll(
        f"the node stores {by} bytes more while the file is open",
        lambda: node.stored_bytes() - before >= by,
        20,
    )


def wait_pinned(path: Path) -> None:
    poll(
        f"{path.name} pinned",
        lambda: os.getxattr(path, "user.jwtfs.pin") == b"pinned",
        PIN_TIMEOUT,
    )


async def assert_pinned_exactly(
    harness: VaultHarness, node: MeasuredNode, name: str, before: set[Cid]
) -> Cid:
    """The file's CID is pinned with the local stream's bytes; no other new DAG."""
    cid = Cid(index_of(harness)[f"/{name}"]["cid"])
    async with KuboClient(node.url, timeout=30) as client:
        pins = await client.pin_ls()
        stored = await client.cat(cid, 0, 1 << 40)
    assert cid in pins
    assert stored == harness.stream_file(cid).read_bytes()
    # Index snapshots are small raw blocks; a cut-short upload would show as
    # a second dag-pb root.
    others = {p for p in pins - before - {cid} if cid_codec(p) != RAW}
    assert others == set()
    return cid


async def assert_ends_pinned(
    harness: VaultHarness,
    node: MeasuredNode,
    path: Path,
    data: bytes,
    before: set[Cid],
    *expected_log: str,
) -> None:
    """``path`` holds ``data``, gets pinned, exactly; the log stays quiet."""
    wait_pinned(path)
    assert path.read_bytes() == data
    await assert_pinned_exactly(harness, node, path.name, before)
    assert_quiet_log(harness, *expected_log)


class WriterProcess:
    """A child that copies ``source`` to ``target``, pausing after ``pause_at``
    bytes until ``finish`` is called, with the file open all the while."""

    SCRIPT = (
        "import sys\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "half = int(sys.argv[3])\n"
        "with open(sys.argv[2], 'wb') as f:\n"
        "    f.write(data[:half])\n"
        "    print('paused', flush=True)\n"
        "    sys.stdin.readline()\n"
        "    f.write(data[half:])\n"
        "print('closed', flush=True)\n"
    )

    def __init__(self, source: Path, target: Path, *, pause_at: int) -> None:
        self._args = [sys.executable, "-c", self.SCRIPT, str(source), str(target)]
        self._args.append(str(pause_at))
        self._child: subprocess.Popen[str] | None = None

    def __enter__(self) -> WriterProcess:
        self._child = subprocess.Popen(
            self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._read_line() == "paused"
        return self

    def _read_line(self) -> str:
        assert self._child is not None and self._child.stdout is not None
        return self._child.stdout.readline().strip()

    def finish(self) -> None:
        assert self._child is not None and self._child.stdin is not None
        self._child.stdin.write("go\n")
        self._child.stdin.flush()
        assert self._read_line() == "closed"
        assert self._child.wait(timeout=30) == 0

    def __exit__(self, *exc: object) -> None:
        assert self._child is not None
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait(timeout=30)


async def pins_of(node: MeasuredNode) -> set[Cid]:
    async with KuboClient(node.url, timeout=30) as client:
        return await client.pin_ls()


def write_in_pieces(path: Path, data: bytes, piece: int, mode: str = "wb") -> None:
    with path.open(mode) as f:
        for start in range(0, len(data), piece):
            f.write(data[start : start + piece])


@pytest.mark.parametrize(
    ("piece", "existing"),
    [(MIB, False), (100_000, False), (MIB, True)],
    ids=["1MiB-writes", "unaligned-writes", "truncating-an-existing-file"],
)
async def test_a_file_reaches_the_node_while_it_is_being_written(
    vault: VaultHarness, node: MeasuredNode, piece: int, existing: bool
) -> None:
    vault.mount()
    path = vault.mnt / "big.bin"
    if existing:
        path.write_bytes(random_bytes(3 * MIB, 7))
        wait_pinned(path)
    data = random_bytes(24 * MIB, 8)
    before_pins = await pins_of(node)
    before = node.stored_bytes()

    with path.open("wb") as f:
        for start in range(0, 16 * MIB, piece):
            f.write(data[start : min(start + piece, 16 * MIB)])
        f.flush()
        wait_node_grows(node, before, 8 * MIB)
        f.write(data[16 * MIB :])
    await assert_ends_pinned(vault, node, path, data, before_pins)


async def test_a_reader_closing_the_file_mid_write_leaves_one_version_pinned(
    vault: VaultHarness, node: MeasuredNode
) -> None:
    vault.mount()
    path = vault.mnt / "watched.bin"
    data = random_bytes(16 * MIB, 15)
    source = vault.root / "source.bin"
    source.write_bytes(data)
    before_pins = await pins_of(node)
    before = node.stored_bytes()

    with WriterProcess(source, path, pause_at=8 * MIB) as writer:
        wait_node_grows(node, before, 4 * MIB)
        with path.open("rb") as reader:
            assert reader.read() == data[: 8 * MIB]
        writer.finish()
    await assert_ends_pinned(vault, node, path, data, before_pins)


async def test_going_back_to_rewrite_ends_the_upload_and_pins_the_final_bytes(
    vault: VaultHarness, node: MeasuredNode
) -> None:
    vault.mount()
    path = vault.mnt / "rewritten.bin"
    data = bytearray(random_bytes(12 * MIB, 9))
    before_pins = await pins_of(node)
    before = node.stored_bytes()

    with path.open("wb") as f:
        f.write(data[: 8 * MIB])
        f.flush()
        wait_node_grows(node, before, 4 * MIB)
        f.seek(MIB)
        f.write(b"rewritten" * 1000)
        f.seek(8 * MIB)
        f.write(data[8 * MIB :])
    data[MIB : MIB + 9000] = b"rewritten" * 1000
    await assert_ends_pinned(vault, node, path, data, before_pins)


async def test_a_file_deleted_while_uploading_leaves_no_pin(
    vault: VaultHarness, node: MeasuredNode
) -> None:
    vault.mount()
    path = vault.mnt / "gone.bin"
    before_pins = await pins_of(node)
    before = node.stored_bytes()

    with path.open("wb") as f:
        f.write(random_bytes(8 * MIB, 10))
        f.flush()
        wait_node_grows(node, before, 4 * MIB)
        path.unlink()
        f.write(random_bytes(MIB, 11))
    (vault.mnt / "after.txt").write_bytes(b"the daemon still works\n")
    vault.wait_pinned()

    new = (await pins_of(node)) - before_pins
    assert {p for p in new if cid_codec(p) != RAW} == set()
    assert status_of(vault)["backlog"] == {"files": 0, "versions": 0, "bytes": 0}
    assert sorted(os.listdir(vault.mnt)) == ["after.txt"]
    assert_quiet_log(vault)


async def test_a_node_stopping_mid_upload_leaves_the_file_queued_until_it_returns(
    vault: VaultHarness, node: MeasuredNode
) -> None:
    vault.mount()
    path = vault.mnt / "interrupted.bin"
    data = random_bytes(16 * MIB, 12)
    before_pins = await pins_of(node)
    before = node.stored_bytes()

    source = vault.root / "source.bin"
    source.write_bytes(data)

    # Another process writes: stopping the node forks, and a fork of the
    # writer would close (flush, so commit) the file at its half.
    with WriterProcess(source, path, pause_at=8 * MIB) as writer:
        wait_node_grows(node, before, 4 * MIB)
        node.stop()
        writer.finish()
    report = status_of(vault)
    assert report["backlog"]["versions"] == 1
    node.start()
    await assert_ends_pinned(
        vault, node, path, data, before_pins, "IPFS node unreachable"
    )


@pytest.mark.parametrize(
    "after_pause",
    [2 * MIB, 0],
    ids=["writes-more-after-the-pause", "closes-after-the-pause"],
)
async def test_a_writer_pausing_past_the_idle_limit_still_gets_its_file_pinned(
    vault: VaultHarness, node: MeasuredNode, after_pause: int
) -> None:
    vault.mount()
    path = vault.mnt / "paused.bin"
    # Whole MiBs: nothing is left to write out at the close, so the commit
    # alone must notice that the upload gave up.
    data = random_bytes(4 * MIB + after_pause, 13)
    before_pins = await pins_of(node)
    before = node.stored_bytes()

    with path.open("wb") as f:
        f.write(data[: 4 * MIB])
        f.flush()
        wait_node_grows(node, before, 2 * MIB)
        time.sleep(IDLE_SECONDS + 1.5)
        f.write(data[4 * MIB :])
    await assert_ends_pinned(vault, node, path, data, before_pins)


def test_upload_while_writing_is_off_for_a_node_on_loopback_unless_set(
    tmp_path: Path, node: MeasuredNode
) -> None:
    harness = new_vault(tmp_path, node.url)
    try:
        harness.mount()
        path = harness.mnt / "later.bin"
        before = node.stored_bytes()
        with path.open("wb") as f:
            f.write(random_bytes(8 * MIB, 14))
            f.flush()
            time.sleep(2)
            grown = node.stored_bytes() - before
        wait_pinned(path)
        assert grown < MIB
        assert node.stored_bytes() - before >= 8 * MIB
    finally:
        harness.cleanup()


def test_a_bad_upload_while_writing_setting_is_refused_naming_file_and_key(
    tmp_path: Path, node: MeasuredNode
) -> None:
    harness = new_vault(tmp_path, node.url)
    harness.set_config("ipfs", "upload_while_writing", "sometimes")
    result = harness.jwtfs(
        "mount", str(harness.mnt), "--token-file", str(harness.token_file), check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "config.toml" in lines[0]
    assert "ipfs.upload_while_writing" in lines[0]
    assert 'true, false or "auto"' in lines[0]
    assert not os.path.ismount(harness.mnt)
