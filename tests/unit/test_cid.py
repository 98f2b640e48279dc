"""CID text and binary forms, varints and block verification."""

from __future__ import annotations

import hashlib

import pytest

from jwtfs.blocks.cid import (
    DAG_PB,
    RAW,
    Cid,
    CidError,
    cid_codec,
    cid_for_block,
    cid_from_bytes,
    cid_to_bytes,
    decode_varint,
    encode_varint,
    make_cid,
    normalize_cid,
    parse_cid,
    verify_block,
)
from jwtfs.errors import IntegrityError

# From the shared vectors: the empty stream and a one-byte stream (mod251),
# as a real node's add printed them.
EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
ONE_BYTE_RAW = "bafkreidogqfzz75tpkmjzjke425xqcrmpcib2p5tg44hnbirumdbpl5adu"
# CIDv0 of the empty file and of the one-byte file b"\x00" as dag-pb leaves.
EMPTY_V0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
ONE_BYTE_V0 = "QmS9JArPwa55ePgDnyg6TzX24mYTS1b1vLqWNebyVotKxQ"
# Those two dag-pb blocks, written out by hand: PBNode{Data: UnixFS{Type:
# File, [Data], filesize}}.
EMPTY_V0_BLOCK = bytes.fromhex("0a0408021800")
ONE_BYTE_V0_BLOCK = bytes.fromhex("0a0708021201001801")

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def to_base58(data: bytes) -> str:
    """Reference base58btc encoder, written independently of the decoder."""
    digits = []
    number = int.from_bytes(data, "big")
    while number:
        number, rest = divmod(number, 58)
        digits.append(B58[rest])
    leading = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading + "".join(reversed(digits))


def test_raw_cid_of_empty_and_one_byte_match_the_node() -> None:
    assert cid_for_block(RAW, b"") == EMPTY_RAW
    assert cid_for_block(RAW, b"\x00") == ONE_BYTE_RAW
    assert make_cid(RAW, hashlib.sha256(b"").digest()) == EMPTY_RAW


def test_parse_cid_v1_base32() -> None:
    assert parse_cid(EMPTY_RAW) == (1, RAW, hashlib.sha256(b"").digest())
    assert cid_codec(Cid(EMPTY_RAW)) == RAW


def test_parse_cid_v0() -> None:
    digest = hashlib.sha256(EMPTY_V0_BLOCK).digest()
    assert parse_cid(EMPTY_V0) == (0, DAG_PB, digest)


@pytest.mark.parametrize(
    ("v0", "block"), [(EMPTY_V0, EMPTY_V0_BLOCK), (ONE_BYTE_V0, ONE_BYTE_V0_BLOCK)]
)
def test_normalize_v0_gives_v1_of_the_same_dag_pb_block(v0: str, block: bytes) -> None:
    expected = cid_for_block(DAG_PB, block)
    assert expected.startswith("bafybei")
    assert normalize_cid(v0) == expected


def test_normalize_base58btc_and_upper_base32() -> None:
    binary = cid_to_bytes(Cid(ONE_BYTE_RAW))
    assert normalize_cid("z" + to_base58(binary)) == ONE_BYTE_RAW
    assert normalize_cid("B" + ONE_BYTE_RAW[1:].upper()) == ONE_BYTE_RAW
    assert normalize_cid(ONE_BYTE_RAW) == ONE_BYTE_RAW


def test_binary_round_trip() -> None:
    binary = cid_to_bytes(Cid(EMPTY_RAW))
    assert binary == bytes([1, RAW, 0x12, 0x20]) + hashlib.sha256(b"").digest()
    assert cid_from_bytes(b"xx" + binary + b"tail", 2) == (EMPTY_RAW, 2 + 36)


def test_binary_v0_reads_as_v1_dag_pb() -> None:
    digest = hashlib.sha256(EMPTY_V0_BLOCK).digest()
    cid, end = cid_from_bytes(b"\x12\x20" + digest)
    assert (cid, end) == (normalize_cid(EMPTY_V0), 34)


IDENTITY_HASH_CID = "bafkqaaa"  # CIDv1 raw of no bytes under the identity hash


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b",
        "x" + EMPTY_RAW[1:],
        EMPTY_RAW[:-1],
        EMPTY_RAW[:-1] + "v",  # stray low bits: a second spelling of one CID
        EMPTY_RAW[:10] + EMPTY_RAW[10:].upper(),
        "B" + EMPTY_RAW[1:],  # upper-case prefix with lower-case body
        EMPTY_RAW + "aa",
        IDENTITY_HASH_CID,
        "z0OIl",
        "z",
        EMPTY_V0[:-1],
        "Qm" + "1" * 44,
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk=",
        "z" + "2" * 200,
    ],
)
def test_parse_cid_rejects(text: str) -> None:
    with pytest.raises(CidError):
        parse_cid(text)


def test_cid_error_is_a_value_error() -> None:
    assert issubclass(CidError, ValueError)


def test_cid_from_bytes_rejects_truncated_and_other_versions() -> None:
    binary = cid_to_bytes(Cid(EMPTY_RAW))
    with pytest.raises(CidError):
        cid_from_bytes(binary[:-1])
    with pytest.raises(CidError):
        cid_from_bytes(b"\x02" + binary[1:])
    with pytest.raises(CidError):
        cid_from_bytes(b"\x12\x20" + b"\x00" * 31)


def test_make_cid_rejects_short_digest() -> None:
    with pytest.raises(CidError):
        make_cid(RAW, b"\x00" * 31)


def test_verify_block() -> None:
    verify_block(Cid(ONE_BYTE_RAW), b"\x00")
    with pytest.raises(IntegrityError):
        verify_block(Cid(ONE_BYTE_RAW), b"\x01")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
    ],
)
def test_varint_round_trip(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert decode_varint(b"\xff" + encoded, 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize("data", [b"", b"\x80", b"\x80\x00", b"\xff" * 9 + b"\x01"])
def test_decode_varint_rejects(data: bytes) -> None:
    with pytest.raises(CidError):
        decode_varint(data, 0)


def test_encode_varint_rejects_negative() -> None:
    with pytest.raises(CidError):
        encode_varint(-1)
