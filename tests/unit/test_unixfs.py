"""UnixFS DAGs against a real node's CIDs, streaming, and node decoding."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given
from hypothesis import strategies as st

from jwtfs.blocks.cid import (
    DAG_PB,
    RAW,
    cid_codec,
    cid_for_block,
    encode_varint,
    make_cid,
)
from jwtfs.blocks.unixfs import (
    CHUNK_SIZE,
    MAX_LINKS,
    Dag,
    DagBuilder,
    Leaf,
    build_dag_from_file,
    decode_node,
    decode_spans,
    encode_node,
)
from jwtfs.errors import IntegrityError

# Reference CIDs a real IPFS node's add gave; a copy of the project's shared
# vectors, checked against the shared file whenever that is present.
VECTORS_FILE = Path(__file__).parents[1] / "fixtures" / "unixfs-cids.json"


def shared_vectors_file() -> Path:
    default = Path(__file__).resolve().parents[3] / "shared"
    return (
        Path(os.environ.get("JWTFS_SHARED_DIR", default))
        / "vectors"
        / "unixfs-cids.json"
    )


def load_vectors() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text())["vectors"]
    return rows


VECTORS = load_vectors()


def test_vectors_copy_matches_the_shared_file() -> None:
    shared = shared_vectors_file()
    if not shared.is_file():
        pytest.skip(f"no shared vectors at {shared}; the in-repo copy is used")
    assert json.loads(shared.read_text()) == json.loads(VECTORS_FILE.read_text())


@cache
def generate(gen: str, seed: str | None, size: int) -> bytes:
    """The inputs the vectors were made from, as their 'about' defines them."""
    if gen == "mod251":
        return (bytes(range(251)) * (size // 251 + 1))[:size]
    assert gen == "chacha" and seed is not None
    key = hashlib.sha256(seed.encode("utf-8")).digest()
    encryptor = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()
    return encryptor.update(b"\0" * size)


def vector_input(row: dict[str, Any]) -> bytes:
    data = generate(row["gen"], row["seed"], row["size"])
    assert hashlib.sha256(data).hexdigest() == row["sha256"]
    return data


def vector(gen: str, seed: str | None, size: int) -> dict[str, Any]:
    (row,) = (
        r for r in VECTORS if (r["gen"], r["seed"], r["size"]) == (gen, seed, size)
    )
    return row


def build(data: bytes) -> Dag:
    builder = DagBuilder()
    builder.feed(data)
    return builder.finish()


def test_vector_file_covers_the_layout_edges() -> None:
    sizes = {row["size"] for row in VECTORS}
    edges = {0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1}
    assert edges | {MAX_LINKS * CHUNK_SIZE, (MAX_LINKS + 1) * CHUNK_SIZE} <= sizes


@pytest.mark.parametrize(
    "row", VECTORS, ids=[f"{r['gen']}-{r['seed']}-{r['size']}" for r in VECTORS]
)
def test_cid_and_size_match_the_node(row: dict[str, Any]) -> None:
    dag = build(vector_input(row))
    assert dag.root == row["v1raw"]
    assert dag.size == row["v1raw_size"]
    assert dag.length == row["size"]


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE])
def test_single_chunk_is_one_raw_block(size: int) -> None:
    data = generate("mod251", None, size)
    dag = build(data)
    assert dag.root == cid_for_block(RAW, data)
    assert dag.leaves == (Leaf(dag.root, 0, size),)
    assert dag.nodes == {}


def test_175_chunks_keep_a_one_child_node() -> None:
    row = vector("mod251", None, (MAX_LINKS + 1) * CHUNK_SIZE)
    dag = build(vector_input(row))
    assert len(dag.leaves) == MAX_LINKS + 1
    assert len(dag.nodes) == 3
    links, filesize = decode_node(dag.nodes[dag.root])
    assert filesize == row["size"]
    full = vector("mod251", None, MAX_LINKS * CHUNK_SIZE)
    assert [tsize for _, tsize in links] == [full["v1raw_size"], CHUNK_SIZE + 58]
    assert links[0][0] == full["v1raw"]
    last_links, last_size = decode_node(dag.nodes[links[1][0]])
    assert last_links == [(dag.leaves[-1].cid, CHUNK_SIZE)]
    assert last_size == CHUNK_SIZE


def test_leaves_cover_the_stream_in_order() -> None:
    data = generate("mod251", None, 4 * CHUNK_SIZE + 1)
    dag = build(data)
    assert [(leaf.offset, leaf.length) for leaf in dag.leaves] == [
        (0, CHUNK_SIZE),
        (CHUNK_SIZE, CHUNK_SIZE),
        (2 * CHUNK_SIZE, CHUNK_SIZE),
        (3 * CHUNK_SIZE, CHUNK_SIZE),
        (4 * CHUNK_SIZE, 1),
    ]
    for leaf in dag.leaves:
        chunk = data[leaf.offset : leaf.offset + leaf.length]
        assert leaf.cid == cid_for_block(RAW, chunk)


SPLITS = [1, 7, CHUNK_SIZE - 1, 100_003, 2 * CHUNK_SIZE + 5, 3, CHUNK_SIZE]


@pytest.mark.parametrize(
    "size", [CHUNK_SIZE + 1, 4 * CHUNK_SIZE + 1, (MAX_LINKS + 1) * CHUNK_SIZE]
)
def test_feeding_in_odd_pieces_gives_the_same_dag(size: int) -> None:
    row = vector("chacha", "jwtfs", size)
    data = vector_input(row)
    builder = DagBuilder()
    pos = 0
    for step in itertools.cycle(SPLITS):
        if pos >= len(data):
            break
        builder.feed(memoryview(data)[pos : pos + step])
        pos += step
    builder.feed(b"")
    dag = builder.finish()
    assert (dag.root, dag.size) == (row["v1raw"], row["v1raw_size"])
    assert dag == build(data)


@pytest.mark.parametrize("buffer_size", [100_000, 4 * CHUNK_SIZE])
def test_build_dag_from_file(tmp_path: Path, buffer_size: int) -> None:
    row = vector("chacha", "jwtfs", 1048577)
    path = tmp_path / "stream"
    path.write_bytes(vector_input(row))
    dag = build_dag_from_file(path, buffer_size=buffer_size)
    assert (dag.root, dag.size, dag.length) == (
        row["v1raw"],
        row["v1raw_size"],
        1048577,
    )


def test_build_dag_from_file_needs_a_buffer(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    path.write_bytes(b"x")
    with pytest.raises(ValueError):
        build_dag_from_file(path, buffer_size=0)


def test_build_dag_from_sparse_file(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as stream:
        stream.truncate(3 * CHUNK_SIZE)
    dag = build_dag_from_file(path)
    zero_leaf = cid_for_block(RAW, bytes(CHUNK_SIZE))
    assert [leaf.cid for leaf in dag.leaves] == [zero_leaf] * 3
    assert decode_node(dag.nodes[dag.root]) == ([(zero_leaf, CHUNK_SIZE)] * 3, 786432)


def test_builder_is_single_use() -> None:
    builder = DagBuilder()
    builder.finish()
    with pytest.raises(RuntimeError):
        builder.feed(b"x")
    with pytest.raises(RuntimeError):
        builder.finish()


def test_nodes_decode_and_re_encode_exactly() -> None:
    row = vector("mod251", None, 47185927)
    dag = build(vector_input(row))
    assert len(dag.nodes) == 3
    for cid, encoded in dag.nodes.items():
        assert cid == cid_for_block(DAG_PB, encoded)
        links, filesize = decode_node(encoded)
        spans = decode_spans(encoded)
        assert [span[0] for span in spans] == [link[0] for link in links]
        assert sum(length for _, _, length in spans) == filesize
        children = [
            (link_cid, tsize, length)
            for (link_cid, tsize), (_, _, length) in zip(links, spans, strict=True)
        ]
        assert encode_node(children) == encoded
    root_links, root_size = decode_node(dag.nodes[dag.root])
    assert root_size == 47185927
    assert [cid_codec(cid) for cid, _ in root_links] == [DAG_PB, DAG_PB]
    assert [span[1:] for span in decode_spans(dag.nodes[dag.root])] == [
        (0, MAX_LINKS * CHUNK_SIZE),
        (MAX_LINKS * CHUNK_SIZE, 6 * CHUNK_SIZE + 7),
    ]


def two_leaf_node() -> bytes:
    dag = build(generate("mod251", None, CHUNK_SIZE + 1))
    return dag.nodes[dag.root]


TWO_LEAF_NODE = two_leaf_node()


def field(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


ZERO_DIGEST_LEAF = make_cid(RAW, bytes(32))
LINK = field(2, field(1, bytes([1, RAW, 0x12, 0x20]) + bytes(32)) + b"\x18\x00")
FILE_DATA = b"\x08\x02\x18\x00\x20\x00"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        field(1, FILE_DATA) + LINK,  # Data before Links
        LINK,  # no Data
        LINK + field(1, b"\x08\x01\x18\x00\x20\x00"),  # a Directory
        LINK + field(1, b"\x08\x02\x20\x00"),  # no filesize
        LINK + field(1, b"\x08\x02\x18\x05\x20\x05"),  # Tsize below the size
        LINK + field(1, b"\x08\x02\x18\x00"),  # no blocksizes for the link
        LINK + field(1, b"\x08\x02\x12\x01x\x18\x01\x20\x01"),  # inline data
        field(2, field(1, bytes([1, RAW, 0x12, 0x20]) + bytes(32)))
        + field(1, FILE_DATA),
        field(2, b"\x18\x00") + field(1, FILE_DATA),  # link without Hash
        field(2, field(1, b"\x01\x55\x12\x20")) + field(1, FILE_DATA),  # short CID
        field(1, FILE_DATA) + field(1, FILE_DATA),
        LINK + field(1, FILE_DATA) + b"\x1a\x00",  # unknown PBNode field
        LINK + field(1, FILE_DATA)[:-1],  # truncated
    ],
)
def test_decode_node_rejects(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_node(data)


def test_decode_node_accepts_the_minimal_node() -> None:
    assert decode_node(LINK + field(1, FILE_DATA)) == ([(ZERO_DIGEST_LEAF, 0)], 0)


@given(st.binary(max_size=400))
def test_decode_node_on_garbage_raises_only_integrity_error(data: bytes) -> None:
    try:
        links, filesize = decode_node(data)
    except IntegrityError:
        return
    assert filesize >= 0 and all(tsize >= 0 for _, tsize in links)


@given(st.data())
def test_decode_node_on_damaged_node_raises_only_integrity_error(
    data: st.DataObject,
) -> None:
    node = bytearray(TWO_LEAF_NODE)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(node) - 1))
        node[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(node)))
    try:
        links, filesize = decode_node(bytes(node[:cut]))
    except IntegrityError:
        return
    spans = decode_spans(bytes(node[:cut]))
    assert len(links) == len(spans)
    assert sum(length for _, _, length in spans) == filesize


def test_sparse_files_hash_holes_as_zero_chunks(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.write(b"x" * 1000)
        f.seek(3 * CHUNK_SIZE + 5)
        f.write(b"tail")
        f.seek(20 * CHUNK_SIZE)
        f.write(b"y" * 10)
    builder = DagBuilder()
    builder.feed(path.read_bytes())
    assert build_dag_from_file(path) == builder.finish()
