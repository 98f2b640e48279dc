"""Content identifiers: CIDv1 with sha2-256, printed in base32 lower case.

Every CID jwtfs produces is a CIDv1 whose multihash is sha2-256, written in
multibase base32 lower case without padding (a leading ``b``), the form Kubo
prints for ``--cid-version=1``. That one form is also what names files in the
block store, so ``normalize_cid`` turns anything accepted from outside (CIDv1
in base32 or base58btc, CIDv0 ``Qm...``) into it before use.

The binary form of a CIDv1 is ``varint(1) varint(codec) varint(0x12)
varint(32) digest``; a CIDv0 is the bare multihash ``0x12 0x20 digest`` and
always means dag-pb.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import NewType

from jwtfs.errors import IntegrityError

Cid = NewType("Cid", str)

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12

_DIGEST_LEN = 32
# A uint64 needs at most ten 7-bit groups; multiformats caps varints at nine
# bytes (63 bits), which is plenty for codecs, lengths and sizes.
_MAX_VARINT_BYTES = 9
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {char: value for value, char in enumerate(_B58_ALPHABET)}
_V0_PREFIX = bytes([SHA2_256, _DIGEST_LEN])
# Every CID accepted here is under 70 characters; the cap keeps base58's
# quadratic decoding away from hostile megabyte strings.
_MAX_TEXT = 128


class CidError(ValueError):
    """A string or byte sequence is not a CID that jwtfs accepts."""


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer as a multiformats unsigned varint.

    Raises:
        CidError: ``value`` is negative or needs more than 63 bits.
    """
    if value < 0 or value >= 1 << 63:
        raise CidError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Read one minimally encoded unsigned varint at ``pos``.

    Returns the value and the position just after it.

    Raises:
        CidError: the varint is truncated, too long or not minimally encoded.
    """
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos + index >= len(data):
            raise CidError("truncated varint")
        byte = data[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if byte == 0 and index > 0:
                raise CidError("varint is not minimally encoded")
            return value, pos + index + 1
    raise CidError("varint longer than nine bytes")


def make_cid(codec: int, digest: bytes) -> Cid:
    """Build the base32 CIDv1 text for a codec and a sha2-256 digest.

    Raises:
        CidError: the digest is not 32 bytes long, or the codec is negative.
    """
    if len(digest) != _DIGEST_LEN:
        raise CidError(f"sha2-256 digest must be 32 bytes, got {len(digest)}")
    binary = encode_varint(1) + encode_varint(codec) + _V0_PREFIX + digest
    return _to_base32(binary)


def cid_for_block(codec: int, data: bytes | bytearray | memoryview) -> Cid:
    """Return the CIDv1 of a block: its sha2-256 digest under ``codec``.

    Raises:
        CidError: the codec is negative.
    """
    return make_cid(codec, hashlib.sha256(data).digest())


def parse_cid(text: str) -> tuple[int, int, bytes]:
    """Split a CID into (version, codec, sha2-256 digest).

    Accepts CIDv1 in base32 (``b``, or ``B`` for upper case) and base58btc
    (``z``), and CIDv0 (46 characters of base58btc starting ``Qm``).

    Raises:
        CidError: the text is not such a CID, or its hash is not sha2-256.
    """
    if len(text) > _MAX_TEXT:
        raise CidError("CID text too long")
    if len(text) == 46 and text.startswith("Qm"):
        binary = _from_base58(text)
        if len(binary) != 34 or not binary.startswith(_V0_PREFIX):
            raise CidError("CIDv0 is not a sha2-256 multihash")
        return 0, DAG_PB, binary[2:]
    if text[:1] == "b":
        binary = _from_base32(text[1:], upper=False)
    elif text[:1] == "B":
        binary = _from_base32(text[1:], upper=True)
    elif text[:1] == "z":
        binary = _from_base58(text[1:])
    else:
        raise CidError("unsupported multibase prefix")
    version, codec, digest, end = _parse_v1_binary(binary, 0)
    if end != len(binary):
        raise CidError("trailing bytes after CID")
    return version, codec, digest


def normalize_cid(text: str) -> Cid:
    """Return the base32 CIDv1 form of any accepted CID text.

    A CIDv0 becomes the CIDv1 of the same dag-pb block.

    Raises:
        CidError: the text is not an accepted CID.
    """
    _, codec, digest = parse_cid(text)
    return make_cid(codec, digest)


def cid_codec(cid: Cid) -> int:
    """Return the multicodec of a CID (``RAW`` or ``DAG_PB`` for jwtfs DAGs).

    Raises:
        CidError: the text is not an accepted CID.
    """
    return parse_cid(cid)[1]


def cid_to_bytes(cid: Cid) -> bytes:
    """Return the binary CIDv1 form used inside dag-pb links and CAR files.

    Raises:
        CidError: the text is not an accepted CID.
    """
    _, codec, digest = parse_cid(cid)
    return encode_varint(1) + encode_varint(codec) + _V0_PREFIX + digest


def cid_from_bytes(data: bytes | memoryview, pos: int = 0) -> tuple[Cid, int]:
    """Read a binary CID (v1, or v0 as a bare multihash) starting at ``pos``.

    Returns the CID in base32 CIDv1 form and the position just after it.

    Raises:
        CidError: the bytes are not a sha2-256 CID.
    """
    if bytes(data[pos : pos + 2]) == _V0_PREFIX:
        end = pos + 2 + _DIGEST_LEN
        if end > len(data):
            raise CidError("truncated CIDv0")
        return make_cid(DAG_PB, bytes(data[pos + 2 : end])), end
    _, codec, digest, end = _parse_v1_binary(data, pos)
    return make_cid(codec, digest), end


def verify_block(cid: Cid, data: bytes | bytearray | memoryview) -> None:
    """Check that ``data`` hashes to the digest inside ``cid``.

    Raises:
        IntegrityError: the digest does not match.
        CidError: ``cid`` is not an accepted CID.
    """
    _, _, expected = parse_cid(cid)
    actual = hashlib.sha256(data).digest()
    if not hmac.compare_digest(actual, expected):
        raise IntegrityError(f"block does not match its CID {cid}")


def _parse_v1_binary(data: bytes | memoryview, pos: int) -> tuple[int, int, bytes, int]:
    version, pos = decode_varint(data, pos)
    if version != 1:
        raise CidError(f"unsupported CID version {version}")
    codec, pos = decode_varint(data, pos)
    hash_code, pos = decode_varint(data, pos)
    if hash_code != SHA2_256:
        raise CidError(f"unsupported multihash 0x{hash_code:x}")
    length, pos = decode_varint(data, pos)
    if length != _DIGEST_LEN or pos + length > len(data):
        raise CidError("bad sha2-256 digest length")
    return version, codec, bytes(data[pos : pos + length]), pos + length


def _to_base32(binary: bytes) -> Cid:
    return Cid("b" + base64.b32encode(binary).decode("ascii").rstrip("=").lower())


def _from_base32(text: str, *, upper: bool) -> bytes:
    if not text.isascii() or text != (text.upper() if upper else text.lower()):
        raise CidError("bad base32 text")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        binary = base64.b32decode(padded)
    except binascii.Error as exc:
        raise CidError("bad base32 text") from exc
    # Reject spellings with stray low bits so one CID has exactly one text.
    if _to_base32(binary)[1:] != text.lower():
        raise CidError("non-canonical base32 text")
    return binary


def _from_base58(text: str) -> bytes:
    if not text:
        raise CidError("empty base58 text")
    value = 0
    for char in text:
        digit = _B58_INDEX.get(char)
        if digit is None:
            raise CidError("bad base58 character")
        value = value * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return b"\x00" * zeros + body
