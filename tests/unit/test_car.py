"""CARv1 export of a stored DAG and reading it back."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwtfs.blocks.car import read_car, write_car
from jwtfs.blocks.cid import Cid, cid_to_bytes, encode_varint, verify_block
from jwtfs.blocks.store import BlockStore
from jwtfs.blocks.unixfs import CHUNK_SIZE
from jwtfs.errors import IntegrityError, NotFoundError

MOD251_1048577 = "bafybeig7rd7v2ygpkiiyu3kzsojmrj3ujtinivk7fxid5p33t6kdewzvsm"
MOD251_1 = "bafkreidogqfzz75tpkmjzjke425xqcrmpcib2p5tg44hnbirumdbpl5adu"


def mod251(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "store")


def add(store: BlockStore, data: bytes) -> Cid:
    src = store.root.parent / "staged"
    src.write_bytes(data)
    return store.add_stream(src, durable=False).root


def expected_header(root: Cid) -> bytes:
    """{"roots": [root], "version": 1} in dag-cbor, written out by hand."""
    body = (
        b"\xa2"  # map of two pairs
        + b"\x65roots"
        + b"\x81"  # array of one
        + b"\xd8\x2a"  # tag 42
        + b"\x58\x25\x00"  # 37 bytes: the identity multibase prefix, then the CID
        + cid_to_bytes(root)
        + b"\x67version"
        + b"\x01"
    )
    assert len(body) == 58
    return b"\x3a" + body


def export(store: BlockStore, root: Cid) -> bytes:
    out = io.BytesIO()
    written = write_car(store, root, out)
    assert written == len(out.getvalue())
    return out.getvalue()


def test_round_trip(store: BlockStore) -> None:
    data = mod251(1048577)
    root = add(store, data)
    assert root == MOD251_1048577
    car = export(store, root)
    assert car.startswith(expected_header(root))
    roots, blocks = read_car(io.BytesIO(car))
    assert roots == [root]
    assert blocks == list(store.iter_blocks(root))
    assert len(blocks) == 6
    for cid, block in blocks:
        verify_block(cid, block)
    assert b"".join(block for _, block in blocks[1:]) == data
    sections = sum(len(encode_varint(36 + len(b))) + 36 + len(b) for _, b in blocks)
    assert len(car) == len(expected_header(root)) + sections


def test_single_block_stream(store: BlockStore) -> None:
    root = add(store, b"\x00")
    car = export(store, root)
    binary = cid_to_bytes(root)
    assert car == expected_header(root) + b"\x25" + binary + b"\x00"
    assert read_car(io.BytesIO(car)) == ([Cid(MOD251_1)], [(Cid(MOD251_1), b"\x00")])


def test_missing_root(store: BlockStore) -> None:
    with pytest.raises(NotFoundError):
        write_car(store, Cid(MOD251_1048577), io.BytesIO())


def valid_car(store: BlockStore) -> bytes:
    return export(store, add(store, mod251(CHUNK_SIZE + 1)))


def test_read_car_rejects_a_tampered_block(store: BlockStore) -> None:
    car = bytearray(valid_car(store))
    car[-1] ^= 1
    with pytest.raises(IntegrityError):
        read_car(io.BytesIO(bytes(car)))


@pytest.mark.parametrize("cut", [0, 1, 30, 58, 60, 100, -1])
def test_read_car_rejects_truncation(store: BlockStore, cut: int) -> None:
    car = valid_car(store)
    with pytest.raises(IntegrityError):
        read_car(io.BytesIO(car[:cut]))


def test_read_car_of_a_header_alone_has_no_blocks() -> None:
    header = expected_header(Cid(MOD251_1))
    assert read_car(io.BytesIO(header)) == ([Cid(MOD251_1)], [])


def test_read_car_rejects_another_version(store: BlockStore) -> None:
    car = bytearray(valid_car(store))
    assert car[58] == 0x01
    car[58] = 0x02
    with pytest.raises(IntegrityError):
        read_car(io.BytesIO(bytes(car)))


def test_read_car_rejects_oversized_sections() -> None:
    header = expected_header(Cid(MOD251_1))
    with pytest.raises(IntegrityError):
        read_car(io.BytesIO(header + encode_varint(64 * 1024 * 1024)))


@given(st.binary(max_size=300))
def test_read_car_on_garbage_raises_only_integrity_error(data: bytes) -> None:
    try:
        roots, _ = read_car(io.BytesIO(data))
    except IntegrityError:
        return
    assert roots


@given(st.integers(0, 180), st.integers(0, 255))
def test_read_car_on_a_damaged_header_raises_only_integrity_error(
    index: int, value: int
) -> None:
    car = bytearray(
        expected_header(Cid(MOD251_1)) + b"\x25" + cid_to_bytes(Cid(MOD251_1)) + b"\x00"
    )
    car[index % len(car)] = value
    try:
        roots, blocks = read_car(io.BytesIO(bytes(car)))
    except IntegrityError:
        return
    assert len(roots) == 1 and len(blocks) <= 1
