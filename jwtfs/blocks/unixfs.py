"""UnixFS file DAGs laid out exactly as Kubo's ``add --cid-version=1 --raw-leaves``.

The stream is cut into fixed chunks of ``CHUNK_SIZE`` bytes; each chunk is a
raw block (codec 0x55). A stream of at most one chunk is that single raw
block, and the empty stream is the raw block of no bytes.

Longer streams get Kubo's balanced layout: the leaves are grouped, left to
right, into dag-pb nodes of at most ``MAX_LINKS`` children, those nodes again
into nodes of at most ``MAX_LINKS``, and so on until one node is left. Every
subtree but the last of each node is therefore full, and the last may hold a
single child: Kubo never collapses a one-child node (175 chunks give a root
with a full node of 174 leaves and a node with one leaf).

A node's bytes are a dag-pb ``PBNode`` written with its links (field 2) before
its data (field 1), as the dag-pb spec requires, where each ``PBLink`` is Hash
(1), an empty Name (2) and Tsize (3). The data is a UnixFS ``Data`` message:
Type (1) = File, filesize (3), and one blocksizes (4) entry per child, each a
separate non-packed varint (proto2). Tsize is the cumulative size of the
child's DAG: a raw leaf's length, or a node's encoded length plus its links'
Tsize. The root's cumulative size is the ``Size`` that ``add`` reports.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from jwtfs.blocks.cid import (
    DAG_PB,
    RAW,
    Cid,
    CidError,
    cid_for_block,
    cid_from_bytes,
    cid_to_bytes,
    decode_varint,
    encode_varint,
    make_cid,
)
from jwtfs.errors import IntegrityError

CHUNK_SIZE = 262144
MAX_LINKS = 174

_UNIXFS_FILE = 2
_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_BYTES = 2
_WIRE_FIXED32 = 5

_Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Leaf:
    """One raw leaf: its CID and the byte range of the stream it holds."""

    cid: Cid
    offset: int
    length: int


@dataclass(frozen=True)
class Dag:
    """The UnixFS DAG of one stream.

    ``size`` is the root's cumulative DAG size (the ``Size`` of Kubo's add
    response), ``length`` the stream's byte length. ``nodes`` maps every dag-pb
    node to its encoded bytes; it is empty when the root is a single leaf.
    """

    root: Cid
    size: int
    length: int
    leaves: tuple[Leaf, ...]
    nodes: dict[Cid, bytes]


@dataclass(frozen=True)
class _Child:
    cid: Cid
    tsize: int
    length: int


class DagBuilder:
    """Compute a stream's DAG from its bytes, fed in pieces of any size.

    Only the leaf CIDs are kept, never the data, so memory grows by one small
    record per chunk. ``finish`` is called once, after the last ``feed``.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._leaves: list[Leaf] = []
        self._offset = 0
        self._finished = False

    def feed(self, data: _Buffer) -> None:
        """Add the next bytes of the stream.

        Raises:
            RuntimeError: ``finish`` was already called.
        """
        if self._finished:
            raise RuntimeError("DagBuilder.feed after finish")
        view = memoryview(data).cast("B")
        pos = 0
        if self._pending:
            pos = min(CHUNK_SIZE - len(self._pending), len(view))
            self._pending += view[:pos]
            if len(self._pending) == CHUNK_SIZE:
                self._add_leaf(self._pending)
                self._pending.clear()
        # Whole chunks are hashed straight from the caller's buffer, uncopied.
        while len(view) - pos >= CHUNK_SIZE:
            self._add_leaf(view[pos : pos + CHUNK_SIZE])
            pos += CHUNK_SIZE
        self._pending += view[pos:]

    def feed_zero_chunks(self, count: int) -> None:
        """Add ``count`` whole chunks of zeros without hashing them again.

        Only valid at a chunk boundary; sparse streams use it for their holes.

        Raises:
            RuntimeError: ``finish`` was already called, or the stream so far
                does not end on a chunk boundary.
        """
        if self._finished or self._pending:
            raise RuntimeError("DagBuilder.feed_zero_chunks off a chunk boundary")
        cid = _zero_chunk_cid()
        for _ in range(count):
            self._leaves.append(Leaf(cid, self._offset, CHUNK_SIZE))
            self._offset += CHUNK_SIZE

    def finish(self) -> Dag:
        """Return the DAG of everything fed so far.

        Raises:
            RuntimeError: ``finish`` was already called.
        """
        if self._finished:
            raise RuntimeError("DagBuilder.finish called twice")
        self._finished = True
        if self._pending or not self._leaves:
            self._add_leaf(self._pending)
            self._pending = bytearray()
        leaves = tuple(self._leaves)
        level = [_Child(leaf.cid, leaf.length, leaf.length) for leaf in leaves]
        nodes: dict[Cid, bytes] = {}
        while len(level) > 1:
            level = [
                _add_node(level[start : start + MAX_LINKS], nodes)
                for start in range(0, len(level), MAX_LINKS)
            ]
        return Dag(level[0].cid, level[0].tsize, self._offset, leaves, nodes)

    def _add_leaf(self, chunk: _Buffer) -> None:
        digest = hashlib.sha256(chunk).digest()
        length = len(chunk)
        self._leaves.append(Leaf(make_cid(RAW, digest), self._offset, length))
        self._offset += length


def build_dag_from_file(path: Path, *, buffer_size: int = 4 * CHUNK_SIZE) -> Dag:
    """Compute the DAG of a file's whole content, reading it sequentially.

    Memory stays at one buffer plus one record per chunk, so multi-GB files are
    fine. Hashing releases the GIL on large buffers: callers run this in a
    worker thread.

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: ``buffer_size`` is not positive.
    """
    if buffer_size < 1:
        raise ValueError("buffer_size must be positive")
    builder = DagBuilder()
    buffer = bytearray(buffer_size)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as stream:
        fd = stream.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            if offset % CHUNK_SIZE == 0:
                # Whole chunks inside a hole are zeros with a known CID.
                holes = (min(_next_data(fd, offset, size), size) - offset) // CHUNK_SIZE
                if holes:
                    builder.feed_zero_chunks(holes)
                    offset += holes * CHUNK_SIZE
                    continue
            count = os.preadv(fd, [view[: min(buffer_size, size - offset)]], offset)
            if count == 0:
                break
            builder.feed(view[:count])
            offset += count
    return builder.finish()


def _next_data(fd: int, offset: int, size: int) -> int:
    """Where the next data after ``offset`` starts (``size`` when none)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as err:
        if err.errno == errno.ENXIO:
            return size
        # The filesystem cannot tell holes apart: treat everything as data.
        return offset


@functools.cache
def _zero_chunk_cid() -> Cid:
    return make_cid(RAW, hashlib.sha256(bytes(CHUNK_SIZE)).digest())


def encode_node(children: list[tuple[Cid, int, int]]) -> bytes:
    """Encode a UnixFS File node over (cid, tsize, byte length) children.

    Raises:
        CidError: a child CID is not an accepted CID.
    """
    links = bytearray()
    data = bytearray(b"\x08" + encode_varint(_UNIXFS_FILE))
    data += b"\x18" + encode_varint(sum(length for _, _, length in children))
    for cid, tsize, length in children:
        link = _bytes_field(1, cid_to_bytes(cid)) + b"\x12\x00"
        link += b"\x18" + encode_varint(tsize)
        links += _bytes_field(2, link)
        data += b"\x20" + encode_varint(length)
    return bytes(links + _bytes_field(1, data))


def decode_node(data: bytes) -> tuple[list[tuple[Cid, int]], int]:
    """Parse a dag-pb UnixFS File node into its (cid, tsize) links and filesize.

    Raises:
        IntegrityError: the bytes are not a well-formed File node without
            inline data whose blocksizes match its links and filesize.
    """
    links, _, filesize = _parse_node(data)
    return [(cid, tsize) for cid, tsize in links], filesize


def decode_spans(data: bytes) -> list[tuple[Cid, int, int]]:
    """Return each child of a File node as (cid, offset, length).

    The offset is relative to the start of the range the node covers; the
    lengths are the node's blocksizes.

    Raises:
        IntegrityError: as for ``decode_node``.
    """
    links, blocksizes, _ = _parse_node(data)
    spans = []
    offset = 0
    for (cid, _), length in zip(links, blocksizes, strict=True):
        spans.append((cid, offset, length))
        offset += length
    return spans


def _add_node(children: list[_Child], nodes: dict[Cid, bytes]) -> _Child:
    encoded = encode_node([(c.cid, c.tsize, c.length) for c in children])
    cid = cid_for_block(DAG_PB, encoded)
    nodes[cid] = encoded
    tsize = len(encoded) + sum(child.tsize for child in children)
    return _Child(cid, tsize, sum(child.length for child in children))


def _bytes_field(number: int, value: bytes | bytearray) -> bytes:
    return encode_varint(number << 3 | _WIRE_BYTES) + encode_varint(len(value)) + value


def _parse_node(data: bytes) -> tuple[list[tuple[Cid, int]], list[int], int]:
    try:
        links: list[tuple[Cid, int]] = []
        unixfs: bytes | None = None
        for number, wire, _, value in _fields(data):
            if number == 2 and wire == _WIRE_BYTES and unixfs is None:
                links.append(_parse_link(value))
            elif number == 1 and wire == _WIRE_BYTES and unixfs is None:
                unixfs = value
            else:
                raise IntegrityError(f"unexpected dag-pb field {number}")
        if unixfs is None:
            raise IntegrityError("dag-pb node has no UnixFS data")
        blocksizes, filesize = _parse_unixfs(unixfs)
    except CidError as exc:
        raise IntegrityError(f"malformed dag-pb node: {exc}") from exc
    if len(blocksizes) != len(links) or sum(blocksizes) != filesize:
        raise IntegrityError("UnixFS blocksizes do not match links and filesize")
    # A child's DAG holds at least its bytes, so its Tsize cannot be smaller.
    if any(tsize < size for (_, tsize), size in zip(links, blocksizes, strict=True)):
        raise IntegrityError("dag-pb link Tsize is smaller than its blocksize")
    return links, blocksizes, filesize


def _parse_link(data: bytes) -> tuple[Cid, int]:
    cid: Cid | None = None
    tsize: int | None = None
    last = 0
    for number, wire, number_value, value in _fields(data):
        if number <= last:
            raise IntegrityError("dag-pb link fields out of order")
        last = number
        if number == 1 and wire == _WIRE_BYTES:
            cid, end = cid_from_bytes(value)
            if end != len(value):
                raise IntegrityError("trailing bytes after link CID")
        elif number == 3 and wire == _WIRE_VARINT:
            tsize = number_value
        elif number != 2 or wire != _WIRE_BYTES:
            raise IntegrityError(f"unexpected dag-pb link field {number}")
    if cid is None or tsize is None:
        raise IntegrityError("dag-pb link lacks Hash or Tsize")
    return cid, tsize


def _parse_unixfs(data: bytes) -> tuple[list[int], int]:
    kind: int | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    for number, wire, number_value, value in _fields(data):
        if number == 1 and wire == _WIRE_VARINT:
            kind = number_value
        elif number == 2 and wire == _WIRE_BYTES:
            if value:
                raise IntegrityError("UnixFS nodes with inline data are not used")
        elif number == 3 and wire == _WIRE_VARINT:
            filesize = number_value
        elif number == 4 and wire == _WIRE_VARINT:
            blocksizes.append(number_value)
        elif number in (1, 3, 4):
            raise IntegrityError(f"UnixFS field {number} has the wrong type")
    if kind != _UNIXFS_FILE or filesize is None:
        raise IntegrityError("not a UnixFS File node with a filesize")
    return blocksizes, filesize


def _fields(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split a protobuf message into (number, wire type, varint, bytes) fields.

    A varint field carries its value in the third place and ``b""`` in the
    fourth; every other field carries 0 and its raw bytes.
    """
    fields: list[tuple[int, int, int, bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise IntegrityError("protobuf field number 0")
        if wire == _WIRE_VARINT:
            value, pos = decode_varint(data, pos)
            fields.append((number, wire, value, b""))
            continue
        if wire == _WIRE_BYTES:
            size, pos = decode_varint(data, pos)
        elif wire in (_WIRE_FIXED64, _WIRE_FIXED32):
            size = 8 if wire == _WIRE_FIXED64 else 4
        else:
            raise IntegrityError(f"unsupported protobuf wire type {wire}")
        if pos + size > len(data):
            raise IntegrityError("truncated protobuf field")
        fields.append((number, wire, 0, data[pos : pos + size]))
        pos += size
    return fields
