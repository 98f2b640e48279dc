"""The ciphertext stream format, checked against the vectors of docs/FORMAT.md."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from jwtfs.crypto.keys import MasterKey
from jwtfs.crypto.segments import (
    DEFAULT_SEGMENT_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    NONCE_SIZE,
    SEGMENT_OVERHEAD,
    TAG_SIZE,
    FileCipher,
    Header,
    SegmentIntegrityError,
    new_header,
    plaintext_length,
    segment_offset,
    segment_stored_size,
    segments_for_range,
    stream_length,
)
from jwtfs.errors import IntegrityError

ROOT = Path(__file__).resolve().parents[2]
VECTORS_FILE = ROOT / "tests" / "fixtures" / "format" / "vectors.json"
GENERATOR = ROOT / "scripts" / "make-format-vectors"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text())["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}
ENCRYPTABLE = [v for v in VECTORS if not v["holes"]]

S = 4096
STORED = S + 28
KEY = MasterKey(bytes(range(32)))


def vector_cipher(v: dict[str, Any]) -> FileCipher:
    return FileCipher(MasterKey(bytes.fromhex(v["master_key"])), header_of(v))


def header_of(v: dict[str, Any]) -> Header:
    return Header.unpack(bytes.fromhex(v["header"]))


def three() -> tuple[FileCipher, bytes, bytes]:
    """The three-segment vector: its cipher, plaintext and segment bytes."""
    v = BY_NAME["three-segments"]
    stream = bytes.fromhex(v["stream"])
    return vector_cipher(v), bytes.fromhex(v["plaintext"]), stream[HEADER_SIZE:]


def stored_segments(body: bytes) -> list[bytes]:
    return [body[i : i + STORED] for i in range(0, len(body), STORED)]


def rfc5869_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF written from RFC 5869 with hmac, independent of cryptography's."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_constants_are_the_documented_ones() -> None:
    assert (HEADER_SIZE, NONCE_SIZE, TAG_SIZE, SEGMENT_OVERHEAD) == (32, 12, 16, 28)
    assert (DEFAULT_SEGMENT_SIZE, FORMAT_VERSION) == (65536, 1)


def test_vector_file_is_what_the_generator_prints() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR)], capture_output=True, check=True
    )
    assert result.stdout == VECTORS_FILE.read_bytes()


def test_vector_set_is_the_documented_one() -> None:
    v = BY_NAME["three-segments"]
    assert [x["name"] for x in VECTORS] == [
        "three-segments",
        "empty",
        "one-byte",
        "hole",
    ]
    assert v["segment_size"] == 4096
    assert len(bytes.fromhex(v["plaintext"])) == 2 * 4096 + 1000
    assert len(bytes.fromhex(v["stream"])) == 32 + 2 * 4124 + 1028
    assert v["header"] == (
        "4a5746530100000000001000a0a1a2a3a4a5a6a7a8a9aaabacadaeaf00000000"
    )


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v["name"])
def test_vector_decrypts(v: dict[str, Any]) -> None:
    stream = bytes.fromhex(v["stream"])
    cipher = vector_cipher(v)
    assert cipher.header == Header(v["segment_size"], bytes.fromhex(v["file_id"]))
    assert stream[:HEADER_SIZE].hex() == v["header"]
    assert cipher.decrypt_segments(0, stream[HEADER_SIZE:]).hex() == v["plaintext"]
    assert plaintext_length(v["segment_size"], len(stream)) == len(v["plaintext"]) // 2


@pytest.mark.parametrize("v", ENCRYPTABLE, ids=lambda v: v["name"])
def test_vector_reencrypts_with_its_nonces(v: dict[str, Any]) -> None:
    cipher = vector_cipher(v)
    plaintext = bytes.fromhex(v["plaintext"])
    nonces = [bytes.fromhex(n) for n in v["nonces"]]
    body = cipher.encrypt_segments(0, plaintext, _nonces=nonces)
    assert (cipher.header.pack() + body).hex() == v["stream"]
    size = v["segment_size"]
    one_by_one = b"".join(
        cipher.encrypt_segment(i, plaintext[i * size : (i + 1) * size], _nonce=n)
        for i, n in enumerate(nonces)
    )
    assert one_by_one == body


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v["name"])
def test_vector_matches_an_independent_reading_of_the_spec(v: dict[str, Any]) -> None:
    master = bytes.fromhex(v["master_key"])
    file_id = bytes.fromhex(v["file_id"])
    size = v["segment_size"]
    header = (
        b"JWFS" + bytes([1, 0, 0, 0]) + size.to_bytes(4, "big") + file_id + bytes(4)
    )
    assert header.hex() == v["header"]
    file_key = rfc5869_hkdf_sha256(master, file_id, b"jwtfs v1 segment key", 32)
    assert file_key.hex() == v["file_key"]
    stream = bytes.fromhex(v["stream"])
    aead = AESGCM(file_key)
    plaintext = b""
    for i, start in enumerate(range(32, len(stream), size + 28)):
        stored = stream[start : start + size + 28]
        aad = header + i.to_bytes(8, "big")
        assert aad.hex() == v["aad"][i]
        if i in v["holes"]:
            assert stored == bytes(len(stored))
            plaintext += bytes(len(stored) - 28)
        else:
            assert stored[:12].hex() == v["nonces"][i]
            plaintext += aead.decrypt(stored[:12], stored[12:], aad)
    assert plaintext.hex() == v["plaintext"]


def test_every_flipped_byte_fails_its_own_segment_only() -> None:
    cipher, plaintext, body = three()
    segments = stored_segments(body)
    for index, segment in enumerate(segments):
        others = {i: s for i, s in enumerate(segments) if i != index}
        for position in range(len(segment)):
            damaged = bytearray(segment)
            damaged[position] ^= 0x01
            with pytest.raises(SegmentIntegrityError) as info:
                cipher.decrypt_segment(index, damaged)
            assert info.value.segment == index
        for i, s in others.items():
            assert cipher.decrypt_segment(i, s) == plaintext[i * S : (i + 1) * S]


@pytest.mark.parametrize(("index", "position"), [(0, 0), (1, 2000), (2, 1027)])
def test_a_flipped_byte_in_a_stream_names_the_segment(
    index: int, position: int
) -> None:
    cipher, _, body = three()
    damaged = bytearray(body)
    damaged[index * STORED + position] ^= 0x80
    with pytest.raises(SegmentIntegrityError) as info:
        cipher.decrypt_segments(0, damaged)
    assert info.value.segment == index
    assert str(info.value) == f"segment {index}: authentication failed"


def test_swapped_segments_fail() -> None:
    cipher, _, body = three()
    first, second, last = stored_segments(body)
    with pytest.raises(SegmentIntegrityError) as info:
        cipher.decrypt_segments(0, second + first + last)
    assert info.value.segment == 0
    with pytest.raises(SegmentIntegrityError) as info:
        cipher.decrypt_segment(1, first)
    assert info.value.segment == 1


def test_a_segment_from_another_file_fails() -> None:
    cipher, plaintext, body = three()
    other = FileCipher(KEY, Header(S, bytes(range(0x10, 0x20))))
    foreign = other.encrypt_segments(0, plaintext)
    assert other.decrypt_segments(0, foreign) == plaintext
    with pytest.raises(SegmentIntegrityError) as info:
        cipher.decrypt_segments(0, foreign[:STORED] + body[STORED:])
    assert info.value.segment == 0


def test_a_header_with_another_segment_size_fails() -> None:
    _, plaintext, body = three()
    v = BY_NAME["three-segments"]
    bigger = FileCipher(KEY, Header(8192, bytes.fromhex(v["file_id"])))
    with pytest.raises(SegmentIntegrityError) as info:
        bigger.decrypt_segments(0, body)
    assert info.value.segment == 0


def test_another_master_key_fails() -> None:
    _, _, body = three()
    v = BY_NAME["three-segments"]
    stranger = FileCipher(MasterKey(bytes(32)), header_of(v))
    with pytest.raises(SegmentIntegrityError):
        stranger.decrypt_segments(0, body)


def test_truncation_at_a_segment_boundary_is_left_to_the_cid() -> None:
    # No segment says it is the last one; docs/FORMAT.md explains why the CID
    # and the recorded size catch this instead.
    cipher, plaintext, body = three()
    assert cipher.decrypt_segments(0, body[: 2 * STORED]) == plaintext[: 2 * S]


def test_a_cut_inside_a_segment_fails() -> None:
    cipher, _, body = three()
    with pytest.raises(SegmentIntegrityError) as info:
        cipher.decrypt_segments(0, body[:-1])
    assert info.value.segment == 2


def test_a_zeroed_segment_reads_as_zeros() -> None:
    cipher, plaintext, body = three()
    first, second, last = stored_segments(body)
    holed = first + bytes(STORED) + last
    expected = plaintext[:S] + bytes(S) + plaintext[2 * S :]
    assert cipher.decrypt_segments(0, holed) == expected
    assert cipher.decrypt_segment(2, bytes(len(last))) == bytes(1000)


@pytest.mark.parametrize("size", [29, 100, STORED])
def test_a_hole_of_any_valid_length(size: int) -> None:
    cipher, _, _ = three()
    assert cipher.decrypt_segment(7, bytes(size)) == bytes(size - 28)


@pytest.mark.parametrize("position", [0, 11, 12, 500, STORED - 1])
def test_zeros_with_one_other_byte_are_no_hole(position: int) -> None:
    cipher, _, _ = three()
    almost = bytearray(STORED)
    almost[position] = 1
    with pytest.raises(SegmentIntegrityError) as info:
        cipher.decrypt_segment(3, almost)
    assert str(info.value) == "segment 3: authentication failed"


@pytest.mark.parametrize("size", [0, 1, 28, STORED + 1])
def test_impossible_stored_lengths(size: int) -> None:
    cipher, _, _ = three()
    for data in (bytes(size), b"\x01" * size):
        with pytest.raises(SegmentIntegrityError) as info:
            cipher.decrypt_segment(4, data)
        assert info.value.segment == 4
        assert str(info.value) == (
            f"segment 4: stored length {size} is impossible for a segment"
        )


def test_a_short_tail_in_a_stream_fails() -> None:
    cipher, _, body = three()
    with pytest.raises(SegmentIntegrityError) as info:
        cipher.decrypt_segments(0, body[: 2 * STORED] + bytes(28))
    assert str(info.value) == "segment 2: stored length 28 is impossible for a segment"


@pytest.mark.parametrize("size", [0, S + 1])
def test_encrypt_refuses_impossible_plaintext(size: int) -> None:
    cipher, _, _ = three()
    with pytest.raises(ValueError, match="1 to 4096 bytes"):
        cipher.encrypt_segment(0, bytes(size))


@pytest.mark.parametrize("index", [-1, 2**64])
def test_index_out_of_range(index: int) -> None:
    cipher, _, body = three()
    with pytest.raises(ValueError, match="out of range"):
        cipher.encrypt_segment(index, b"x")
    with pytest.raises(ValueError, match="out of range"):
        cipher.decrypt_segment(index, body[:STORED])
    with pytest.raises(ValueError, match="out of range"):
        cipher.decrypt_segment(index, bytes(STORED))


def test_the_last_possible_index_works() -> None:
    cipher, _, _ = three()
    stored = cipher.encrypt_segment(2**64 - 1, b"end")
    assert cipher.decrypt_segment(2**64 - 1, stored) == b"end"


def test_empty_bulk_calls() -> None:
    cipher, _, _ = three()
    assert cipher.encrypt_segments(0, b"") == b""
    assert cipher.decrypt_segments(0, b"") == b""


def test_fresh_nonces_every_time() -> None:
    cipher, plaintext, _ = three()
    first = cipher.encrypt_segments(0, plaintext)
    second = cipher.encrypt_segments(0, plaintext)
    nonces = {s[:12] for s in stored_segments(first) + stored_segments(second)}
    assert len(nonces) == 6


def test_bulk_and_single_calls_agree_at_any_start() -> None:
    cipher, plaintext, _ = three()
    body = cipher.encrypt_segments(10, plaintext)
    pieces = stored_segments(body)
    assert [cipher.decrypt_segment(10 + i, p) for i, p in enumerate(pieces)] == [
        plaintext[:S],
        plaintext[S : 2 * S],
        plaintext[2 * S :],
    ]


def test_buffers_of_any_kind_are_accepted() -> None:
    cipher, plaintext, body = three()
    assert cipher.decrypt_segments(0, memoryview(body)) == plaintext
    assert cipher.decrypt_segments(0, bytearray(body)) == plaintext
    stored = cipher.encrypt_segment(0, memoryview(plaintext)[:S])
    assert cipher.decrypt_segment(0, bytearray(stored)) == plaintext[:S]


def test_nonce_count_must_match() -> None:
    cipher, plaintext, _ = three()
    with pytest.raises(ValueError, match="3 nonces needed, 2 given"):
        cipher.encrypt_segments(0, plaintext, _nonces=[bytes(12), bytes(12)])


def test_one_cipher_serves_many_threads() -> None:
    cipher = FileCipher(KEY, new_header())
    failures: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for round_ in range(30):
                data = bytes([seed, round_]) * (DEFAULT_SEGMENT_SIZE * 3 // 2)
                body = cipher.encrypt_segments(seed * 1000 + round_, data)
                assert cipher.decrypt_segments(seed * 1000 + round_, body) == data
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3 * S + 5), st.integers(min_value=0, max_value=2**40))
def test_round_trip(plaintext: bytes, first: int) -> None:
    cipher = FileCipher(KEY, Header(S, bytes(16)))
    body = cipher.encrypt_segments(first, plaintext)
    assert len(body) + HEADER_SIZE == stream_length(S, len(plaintext))
    assert cipher.decrypt_segments(first, body) == plaintext


def test_segment_integrity_error_is_an_integrity_error() -> None:
    error = SegmentIntegrityError(9, "authentication failed")
    assert isinstance(error, IntegrityError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.segment, str(copy)) == (9, "segment 9: authentication failed")


# Header


def test_header_bytes() -> None:
    header = Header(65536, bytes(range(16)))
    assert header.pack() == (
        b"JWFS\x01\x00\x00\x00\x00\x01\x00\x00" + bytes(range(16)) + bytes(4)
    )
    assert Header.unpack(header.pack()) == header


def test_unpack_reads_only_the_head_of_a_stream() -> None:
    v = BY_NAME["three-segments"]
    assert Header.unpack(bytes.fromhex(v["stream"])) == header_of(v)


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (0, ord("X"), "stream header does not start with b'JWFS'"),
        (3, ord("s"), "stream header does not start with b'JWFS'"),
        (4, 0, "stream format version 0 is not supported"),
        (4, 2, "stream format version 2 is not supported"),
        (5, 1, "stream header has non-zero reserved bytes"),
        (7, 0x80, "stream header has non-zero reserved bytes"),
        (28, 1, "stream header has non-zero reserved bytes"),
        (31, 0xFF, "stream header has non-zero reserved bytes"),
        (8, 1, "stream header has invalid segment size 16781312"),
        (10, 0, "stream header has invalid segment size 0"),
        (11, 1, "stream header has invalid segment size 4097"),
    ],
)
def test_unpack_refuses(position: int, value: int, message: str) -> None:
    data = bytearray(Header(4096, bytes(range(16))).pack())
    data[position] = value
    with pytest.raises(IntegrityError) as info:
        Header.unpack(data)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("size", "valid"),
    [
        (2048, False),
        (4096, True),
        (6144, False),
        (65536, True),
        (1 << 20, True),
        (1 << 21, False),
        (0, False),
    ],
)
def test_segment_sizes(size: int, valid: bool) -> None:
    data = bytearray(Header(4096, bytes(16)).pack())
    data[8:12] = size.to_bytes(4, "big")
    if valid:
        assert Header.unpack(data).segment_size == size
        assert new_header(size).segment_size == size
    else:
        with pytest.raises(IntegrityError, match="invalid segment size"):
            Header.unpack(data)
        with pytest.raises(ValueError, match="not a power of two from 4096"):
            new_header(size)


def test_unpack_refuses_short_data() -> None:
    with pytest.raises(IntegrityError) as info:
        Header.unpack(bytes(31))
    assert str(info.value) == "stream of 31 bytes is shorter than its 32-byte header"


def test_header_refuses_a_bad_file_id() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Header(4096, bytes(15))


def test_new_header_has_a_random_file_id() -> None:
    first, second = new_header(), new_header()
    assert first.segment_size == 65536
    assert len(first.file_id) == 16
    assert first.file_id != second.file_id


# Layout arithmetic


def test_layout_values() -> None:
    assert segment_stored_size(4096) == 4124
    assert segment_stored_size(65536) == 65564
    assert [segment_offset(4096, i) for i in range(3)] == [32, 4156, 8280]
    assert stream_length(4096, 0) == 32
    assert stream_length(4096, 1) == 61
    assert stream_length(4096, 4096) == 4156
    assert stream_length(4096, 9192) == 9308
    assert plaintext_length(4096, 9308) == 9192
    assert plaintext_length(65536, 32 + 65564 * 2 + 29) == 131073


@pytest.mark.parametrize("size", [4096, 65536])
def test_lengths_round_trip(size: int) -> None:
    lengths = [0, 1, size - 1, size, size + 1, 2 * size - 1, 2 * size, 2 * size + 1]
    lengths += [10 * size + 7, 1 << 40]
    for length in lengths:
        assert plaintext_length(size, stream_length(size, length)) == length


def test_every_stream_length_is_valid_or_refused() -> None:
    valid = set()
    for length in range(4 * S):
        valid.add(stream_length(S, length))
    for length in range(3 * STORED + 100):
        if length in valid:
            assert stream_length(S, plaintext_length(S, length)) == length
        else:
            with pytest.raises(IntegrityError):
                plaintext_length(S, length)


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (0, "stream of 0 bytes is shorter than its 32-byte header"),
        (31, "stream of 31 bytes is shorter than its 32-byte header"),
        (33, "stream of 33 bytes ends in a 1-byte piece, too short to be a segment"),
        (60, "stream of 60 bytes ends in a 28-byte piece, too short to be a segment"),
        (
            32 + STORED + 28,
            "stream of 4184 bytes ends in a 28-byte piece, too short to be a segment",
        ),
    ],
)
def test_invalid_stream_lengths(length: int, message: str) -> None:
    with pytest.raises(IntegrityError) as info:
        plaintext_length(S, length)
    assert str(info.value) == message


def test_negative_plaintext_length() -> None:
    with pytest.raises(ValueError, match="negative"):
        stream_length(S, -1)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 0, range(0, 0)),
        (5000, 0, range(1, 1)),
        (0, 1, range(0, 1)),
        (0, S, range(0, 1)),
        (0, S + 1, range(0, 2)),
        (S - 1, 2, range(0, 2)),
        (S, S, range(1, 2)),
        (100, 10000, range(0, 3)),
        (3 * S - 1, 1, range(2, 3)),
    ],
)
def test_segments_for_range(offset: int, length: int, expected: range) -> None:
    assert segments_for_range(S, offset, length) == expected


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1)])
def test_segments_for_a_negative_range(offset: int, length: int) -> None:
    with pytest.raises(ValueError, match="invalid byte range"):
        segments_for_range(S, offset, length)
