"""The block store on real directories: add, read, walk, repair, remove, ENOSPC."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jwtfs.blocks.cid import RAW, Cid, CidError, cid_codec, cid_for_block, verify_block
from jwtfs.blocks.store import BlockStore, StoreUsage
from jwtfs.blocks.unixfs import CHUNK_SIZE, decode_node
from jwtfs.errors import IntegrityError, NotFoundError, StoreError, StoreFullError

# mod251 inputs from the shared vectors, with the CIDs a real node gave them.
MOD251_1048577 = "bafybeig7rd7v2ygpkiiyu3kzsojmrj3ujtinivk7fxid5p33t6kdewzvsm"
MOD251_262145 = "bafybeiexg2oqkfnj56l7fcmawswqbijt5shq4b5rg6a546uwpkqqzwjioi"
MOD251_1 = "bafkreidogqfzz75tpkmjzjke425xqcrmpcib2p5tg44hnbirumdbpl5adu"


def mod251(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "store")


def stage(store: BlockStore, data: bytes, name: str = "staged") -> Path:
    staging = store.root.parent / "staging"
    staging.mkdir(exist_ok=True)
    path = staging / name
    path.write_bytes(data)
    return path


def files_under(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*") if p.is_file())


def test_creates_private_directories(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "store")
    for sub in ("streams", "nodes"):
        assert stat.S_IMODE((store.root / sub).stat().st_mode) == 0o700


@pytest.mark.parametrize("durable", [False, True])
def test_add_stream_moves_the_file_into_place(store: BlockStore, durable: bool) -> None:
    data = mod251(1048577)
    src = stage(store, data)
    dag = store.add_stream(src, durable=durable)
    assert (dag.root, dag.size, dag.length) == (MOD251_1048577, 1048831, 1048577)
    assert not src.exists()
    path = store.stream_path(dag.root)
    assert path == store.root / "streams" / dag.root[-2:] / dag.root
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    (node_file,) = files_under(store.root / "nodes")
    assert node_file == store.root / "nodes" / dag.root[-2:] / dag.root
    assert node_file.read_bytes() == dag.nodes[dag.root]
    assert stat.S_IMODE(node_file.stat().st_mode) == 0o400


def test_adding_a_stored_stream_again_drops_the_copy(store: BlockStore) -> None:
    first = store.add_stream(stage(store, mod251(262145), "a"), durable=False)
    src = stage(store, mod251(262145), "b")
    second = store.add_stream(src, durable=True)
    assert second == first
    assert not src.exists()
    assert list(store.iter_streams()) == [Cid(MOD251_262145)]


def test_single_block_stream_has_no_nodes(store: BlockStore) -> None:
    dag = store.add_stream(stage(store, b"\x00"), durable=False)
    assert dag.root == MOD251_1
    assert files_under(store.root / "nodes") == []
    assert store.get_block(dag.root, dag.root) == b"\x00"
    assert list(store.iter_blocks(dag.root)) == [(MOD251_1, b"\x00")]


def test_empty_stream(store: BlockStore) -> None:
    dag = store.add_stream(stage(store, b""), durable=False)
    assert dag.root == cid_for_block(RAW, b"")
    assert store.read_range(dag.root, 0, 10) == b""
    assert list(store.iter_blocks(dag.root)) == [(dag.root, b"")]


def test_read_range(store: BlockStore) -> None:
    data = mod251(1048577)
    root = store.add_stream(stage(store, data), durable=False).root
    assert store.read_range(root, CHUNK_SIZE - 3, 10) == data[CHUNK_SIZE - 3 :][:10]
    assert store.read_range(root, 1048570, 100) == data[1048570:]
    assert store.read_range(root, 1048577, 5) == b""
    assert store.read_range(root, 0, 0) == b""
    with pytest.raises(ValueError):
        store.read_range(root, -1, 1)


def test_missing_stream(store: BlockStore) -> None:
    missing = Cid(MOD251_1048577)
    assert not store.has_stream(missing)
    with pytest.raises(NotFoundError):
        store.stream_path(missing)
    with pytest.raises(NotFoundError):
        store.read_range(missing, 0, 1)
    with pytest.raises(NotFoundError):
        store.get_block(missing, missing)
    with pytest.raises(NotFoundError):
        list(store.iter_blocks(missing))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "", MOD251_1.upper()])
def test_non_canonical_cids_never_reach_the_filesystem(
    store: BlockStore, bad: str
) -> None:
    with pytest.raises(CidError):
        store.has_stream(Cid(bad))


def test_iter_blocks_walks_root_first_in_link_order(store: BlockStore) -> None:
    data = mod251(1048577)
    dag = store.add_stream(stage(store, data), durable=False)
    blocks = list(store.iter_blocks(dag.root))
    assert blocks[0] == (dag.root, dag.nodes[dag.root])
    assert [cid for cid, _ in blocks[1:]] == [leaf.cid for leaf in dag.leaves]
    assert b"".join(block for _, block in blocks[1:]) == data
    for cid, block in blocks:
        verify_block(cid, block)


def test_iter_blocks_yields_a_repeated_leaf_once(store: BlockStore) -> None:
    dag = store.add_stream(stage(store, bytes(3 * CHUNK_SIZE)), durable=False)
    zero = cid_for_block(RAW, bytes(CHUNK_SIZE))
    blocks = list(store.iter_blocks(dag.root))
    assert [cid for cid, _ in blocks] == [dag.root, zero]
    assert store.get_block(dag.root, zero) == bytes(CHUNK_SIZE)


def test_get_block_returns_every_block_verified(store: BlockStore) -> None:
    data = mod251(1048577)
    dag = store.add_stream(stage(store, data), durable=False)
    assert store.get_block(dag.root, dag.root) == dag.nodes[dag.root]
    for leaf in dag.leaves:
        block = store.get_block(dag.root, leaf.cid)
        verify_block(leaf.cid, block)
        assert block == data[leaf.offset : leaf.offset + leaf.length]
    with pytest.raises(NotFoundError):
        store.get_block(dag.root, Cid(MOD251_1))


def test_get_block_in_a_two_level_dag(store: BlockStore) -> None:
    data = mod251(175 * CHUNK_SIZE)
    dag = store.add_stream(stage(store, data), durable=False)
    links, _ = decode_node(dag.nodes[dag.root])
    last_node = links[1][0]
    assert store.get_block(dag.root, last_node) == dag.nodes[last_node]
    last = dag.leaves[-1]
    assert last.offset == 174 * CHUNK_SIZE
    assert store.get_block(dag.root, last.cid) == data[last.offset :]
    assert [cid for cid, _ in store.iter_blocks(dag.root)][:2] == [
        dag.root,
        links[0][0],
    ]


def test_a_missing_node_is_rebuilt_from_the_stream(
    store: BlockStore, caplog: pytest.LogCaptureFixture
) -> None:
    dag = store.add_stream(stage(store, mod251(1048577)), durable=False)
    node_file = store.root / "nodes" / dag.root[-2:] / dag.root
    node_file.unlink()
    with caplog.at_level(logging.WARNING, "jwtfs.blocks.store"):
        assert (
            store.get_block(dag.root, dag.leaves[2].cid)
            == mod251(3 * CHUNK_SIZE)[2 * CHUNK_SIZE :]
        )
    assert [r.getMessage() for r in caplog.records] == [
        f"node {dag.root} of stream {dag.root} is missing; rebuilding"
    ]
    assert node_file.read_bytes() == dag.nodes[dag.root]


def test_a_damaged_node_is_rebuilt_from_the_stream(
    store: BlockStore, caplog: pytest.LogCaptureFixture
) -> None:
    dag = store.add_stream(stage(store, mod251(262145)), durable=False)
    node_file = store.root / "nodes" / dag.root[-2:] / dag.root
    node_file.chmod(0o600)
    node_file.write_bytes(b"\x00" + dag.nodes[dag.root][1:])
    with caplog.at_level(logging.WARNING, "jwtfs.blocks.store"):
        blocks = list(store.iter_blocks(dag.root))
    assert blocks[0] == (dag.root, dag.nodes[dag.root])
    assert len(caplog.records) == 1
    assert "is damaged" in caplog.records[0].getMessage()
    assert node_file.read_bytes() == dag.nodes[dag.root]


def test_a_damaged_stream_fails_integrity(store: BlockStore) -> None:
    dag = store.add_stream(stage(store, mod251(1048577)), durable=False)
    path = store.stream_path(dag.root)
    path.chmod(0o600)
    with path.open("r+b") as stream:
        stream.seek(CHUNK_SIZE + 5)
        stream.write(b"\xff")
    assert store.get_block(dag.root, dag.leaves[0].cid) == mod251(CHUNK_SIZE)
    with pytest.raises(IntegrityError):
        store.get_block(dag.root, dag.leaves[1].cid)
    with pytest.raises(IntegrityError):
        list(store.iter_blocks(dag.root))


def test_a_truncated_stream_fails_integrity(store: BlockStore) -> None:
    dag = store.add_stream(stage(store, mod251(262145)), durable=False)
    path = store.stream_path(dag.root)
    path.chmod(0o600)
    os.truncate(path, CHUNK_SIZE)
    with pytest.raises(IntegrityError):
        store.get_block(dag.root, dag.leaves[1].cid)


def test_remove_stream(store: BlockStore) -> None:
    keep = store.add_stream(stage(store, b"\x00"), durable=False).root
    dag = store.add_stream(stage(store, mod251(175 * CHUNK_SIZE)), durable=False)
    assert len(files_under(store.root / "nodes")) == 3
    store.get_block(dag.root, dag.leaves[0].cid)
    store.remove_stream(dag.root)
    assert not store.has_stream(dag.root)
    assert files_under(store.root / "nodes") == []
    with pytest.raises(NotFoundError):
        store.get_block(dag.root, dag.leaves[0].cid)
    store.remove_stream(dag.root)
    assert list(store.iter_streams()) == [keep]


def test_usage_counts_streams_and_allocated_bytes(store: BlockStore) -> None:
    assert store.usage() == StoreUsage(streams=0, bytes=0)
    store.add_stream(stage(store, mod251(1048577), "a"), durable=False)
    store.add_stream(stage(store, b"\x00", "b"), durable=False)
    on_disk = [p.stat().st_blocks * 512 for p in files_under(store.root)]
    assert len(on_disk) == 3
    assert store.usage() == StoreUsage(streams=2, bytes=sum(on_disk))
    assert store.usage().bytes >= 1048577


def test_iter_streams_is_sorted(store: BlockStore) -> None:
    roots = [
        store.add_stream(stage(store, mod251(size), str(size)), durable=False).root
        for size in (1, 2, 3, 262145)
    ]
    listed = list(store.iter_streams())
    assert sorted(listed, key=lambda cid: (cid[-2:], cid)) == listed
    assert sorted(listed) == sorted(roots)
    assert {cid_codec(cid) for cid in listed} == {RAW, 0x70}


def test_add_of_a_missing_file_is_a_store_error(store: BlockStore) -> None:
    with pytest.raises(StoreError) as info:
        store.add_stream(store.root / "absent", durable=False)
    assert type(info.value) is StoreError
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_a_failed_add_leaves_neither_stream_nor_nodes(store: BlockStore) -> None:
    # A plain file where the stream's shard directory belongs makes the final
    # rename fail after the nodes were written.
    (store.root / "streams" / MOD251_262145[-2:]).write_bytes(b"")
    src = stage(store, mod251(262145))
    with pytest.raises(StoreError) as info:
        store.add_stream(src, durable=False)
    assert isinstance(info.value.__cause__, NotADirectoryError)
    assert src.read_bytes() == mod251(262145)
    assert files_under(store.root / "nodes") == []


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so that ENOSPC can really happen."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(path: Path) -> None:
    with path.open("wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\x00" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_disk_full_is_store_full_error(tiny_fs: Path) -> None:
    store = BlockStore(tiny_fs / "store")
    src = tiny_fs / "staged"
    src.write_bytes(mod251(262145))
    filler = tiny_fs / "filler"
    fill(filler)
    with pytest.raises(StoreFullError) as info:
        store.add_stream(src, durable=True)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert src.read_bytes() == mod251(262145)
    assert list(store.iter_streams()) == []
    assert files_under(store.root / "nodes") == []

    filler.unlink()
    assert store.add_stream(src, durable=True).root == MOD251_262145
