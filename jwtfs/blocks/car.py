"""CARv1 export and import of one stream's DAG.

A CARv1 file is a varint-length-prefixed header, the dag-cbor map
``{"roots": [CID], "version": 1}``, followed by one section per block:
``varint(len(cid) + len(data)) cid data`` with the CID in binary form. In
dag-cbor a CID is tag 42 around a byte string holding a 0x00 (the identity
multibase prefix) and the binary CID; map keys are sorted by length first,
then bytewise, so ``roots`` comes before ``version``.

Only the small part of CBOR that such a header uses is encoded and decoded
here; anything else in a header is refused.
"""

from __future__ import annotations

from typing import BinaryIO

from jwtfs.blocks.cid import (
    Cid,
    CidError,
    cid_from_bytes,
    cid_to_bytes,
    decode_varint,
    encode_varint,
    verify_block,
)
from jwtfs.blocks.store import BlockStore
from jwtfs.errors import IntegrityError

_CBOR_UINT = 0
_CBOR_BYTES = 2
_CBOR_TEXT = 3
_CBOR_ARRAY = 4
_CBOR_MAP = 5
_CBOR_TAG = 6
_CID_TAG = 42
# Kubo refuses blocks over 2 MiB in exchange; a header is a few dozen bytes.
# Larger lengths in a file being read mean garbage, not a bigger allocation.
_MAX_SECTION = 4 * 1024 * 1024
_MAX_HEADER = 64 * 1024


def write_car(store: BlockStore, root: Cid, out: BinaryIO) -> int:
    """Write the DAG rooted at ``root`` as a CARv1 file; return bytes written.

    Blocks follow the root, depth first in link order, each once.

    Raises:
        NotFoundError: the stream is not in the store.
        IntegrityError: a stored block does not match its CID.
        StoreError: the store could not be read.
        OSError: ``out`` could not be written.
    """
    store.stream_path(root)  # fail before writing anything when it is absent
    written = _write(out, _with_length(_encode_header(root)))
    for cid, data in store.iter_blocks(root):
        binary = cid_to_bytes(cid)
        written += _write(out, encode_varint(len(binary) + len(data)) + binary)
        written += _write(out, data)
    return written


def read_car(data: BinaryIO) -> tuple[list[Cid], list[tuple[Cid, bytes]]]:
    """Read a CARv1 file into its roots and its (cid, block) sections.

    Every block is checked against its CID.

    Raises:
        IntegrityError: the file is not a well-formed CARv1 with sha2-256
            CIDs, or a block does not match its CID.
        OSError: ``data`` could not be read.
    """
    header = _read_section(data, _MAX_HEADER)
    if header is None:
        raise IntegrityError("CAR file is empty")
    roots = _decode_header(header)
    blocks: list[tuple[Cid, bytes]] = []
    while (section := _read_section(data, _MAX_SECTION)) is not None:
        try:
            cid, start = cid_from_bytes(section)
        except CidError as exc:
            raise IntegrityError(f"bad CID in CAR section: {exc}") from exc
        block = section[start:]
        verify_block(cid, block)
        blocks.append((cid, block))
    return roots, blocks


def _write(out: BinaryIO, data: bytes) -> int:
    out.write(data)
    return len(data)


def _with_length(data: bytes) -> bytes:
    return encode_varint(len(data)) + data


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes([major << 5 | extra]) + value.to_bytes(width, "big")
    raise ValueError(f"CBOR argument too large: {value}")


def _cbor_text(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return _cbor_head(_CBOR_TEXT, len(encoded)) + encoded


def _encode_header(root: Cid) -> bytes:
    link = b"\x00" + cid_to_bytes(root)
    return (
        _cbor_head(_CBOR_MAP, 2)
        + _cbor_text("roots")
        + _cbor_head(_CBOR_ARRAY, 1)
        + _cbor_head(_CBOR_TAG, _CID_TAG)
        + _cbor_head(_CBOR_BYTES, len(link))
        + link
        + _cbor_text("version")
        + _cbor_head(_CBOR_UINT, 1)
    )


def _read_section(data: BinaryIO, limit: int) -> bytes | None:
    """Read one varint-prefixed section; ``None`` at a clean end of file."""
    prefix = bytearray()
    while True:
        byte = data.read(1)
        if not byte:
            if prefix:
                raise IntegrityError("CAR file ends inside a length")
            return None
        prefix += byte
        if byte[0] < 0x80:
            break
        if len(prefix) >= 9:
            raise IntegrityError("CAR section length is too long")
    try:
        length, _ = decode_varint(bytes(prefix), 0)
    except CidError as exc:
        raise IntegrityError(f"bad CAR section length: {exc}") from exc
    if length == 0 or length > limit:
        raise IntegrityError(f"CAR section of {length} bytes is out of bounds")
    section = data.read(length)
    if len(section) != length:
        raise IntegrityError("CAR file ends inside a section")
    return section


def _decode_header(header: bytes) -> list[Cid]:
    decoder = _CborReader(header)
    value = decoder.read_item()
    if decoder.pos != len(header):
        raise IntegrityError("trailing bytes after the CAR header")
    if not isinstance(value, dict) or set(value) != {"roots", "version"}:
        raise IntegrityError("CAR header is not a map of roots and version")
    roots = value["roots"]
    if value["version"] != 1 or not isinstance(roots, list) or not roots:
        raise IntegrityError("CAR header is not version 1 with roots")
    links = [root for root in roots if isinstance(root, _CidLink)]
    if len(links) != len(roots):
        raise IntegrityError("CAR roots are not CIDs")
    return [link.cid for link in links]


class _CidLink:
    """A CID met under tag 42 while decoding CBOR."""

    def __init__(self, cid: Cid) -> None:
        self.cid = cid


_CborValue = int | bytes | str | list["_CborValue"] | dict[str, "_CborValue"] | _CidLink


class _CborReader:
    """Decode the CBOR subset of a CAR header: uints, strings, lists, maps, CIDs."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read_item(self, depth: int = 0) -> _CborValue:
        if depth > 8:
            raise IntegrityError("CAR header nests too deeply")
        major, value = self._read_head()
        if major == _CBOR_UINT:
            return value
        if major in (_CBOR_BYTES, _CBOR_TEXT):
            raw = self._take(value)
            return raw if major == _CBOR_BYTES else self._decode_text(raw)
        if major == _CBOR_ARRAY:
            return [self.read_item(depth + 1) for _ in range(self._count(value))]
        if major == _CBOR_MAP:
            return self._read_map(value, depth)
        if major == _CBOR_TAG and value == _CID_TAG:
            return self._read_cid(depth)
        raise IntegrityError(f"unsupported CBOR item (major type {major})")

    def _read_map(self, count: int, depth: int) -> dict[str, _CborValue]:
        result: dict[str, _CborValue] = {}
        for _ in range(self._count(count)):
            key = self.read_item(depth + 1)
            if not isinstance(key, str) or key in result:
                raise IntegrityError("CAR header map key is not a unique string")
            result[key] = self.read_item(depth + 1)
        return result

    def _read_cid(self, depth: int) -> _CidLink:
        raw = self.read_item(depth + 1)
        if not isinstance(raw, bytes) or raw[:1] != b"\x00":
            raise IntegrityError("CBOR tag 42 does not hold a binary CID")
        try:
            cid, end = cid_from_bytes(raw, 1)
        except CidError as exc:
            raise IntegrityError(f"bad root CID in CAR header: {exc}") from exc
        if end != len(raw):
            raise IntegrityError("trailing bytes after a root CID")
        return _CidLink(cid)

    def _read_head(self) -> tuple[int, int]:
        first = self._take(1)[0]
        major, extra = first >> 5, first & 0x1F
        if extra < 24:
            return major, extra
        widths = {24: 1, 25: 2, 26: 4, 27: 8}
        if extra not in widths:
            raise IntegrityError("indefinite or reserved CBOR length")
        return major, int.from_bytes(self._take(widths[extra]), "big")

    def _count(self, count: int) -> int:
        # Every item takes at least one byte, which bounds honest counts.
        if count > len(self.data) - self.pos:
            raise IntegrityError("CBOR count exceeds the header size")
        return count

    def _take(self, size: int) -> bytes:
        if size > len(self.data) - self.pos:
            raise IntegrityError("truncated CBOR item")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def _decode_text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IntegrityError("CBOR text is not UTF-8") from exc
