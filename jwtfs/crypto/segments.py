"""The ciphertext stream: a 32-byte header, then AES-256-GCM segments.

``docs/FORMAT.md`` is the specification; this module implements it and the
test vectors in ``tests/fixtures/format/`` pin it down. In short::

    stream  = header || segment_0 || segment_1 || ...
    header  = "JWFS" | version 1 | 3 zero | S (u32 BE) | file id (16) | 4 zero
    segment = nonce (12) || AES-256-GCM(P_i) || tag (16)
    key     = HKDF-SHA256(master key, salt=file id, info="jwtfs v1 segment key")
    AAD_i   = header || i (u64 BE)

Every plaintext segment is S bytes except the last, which may be shorter but is
never empty. A stored segment that is entirely zero bytes is a hole and reads
as zeros. Nothing in a segment marks it as the last one: truncation of a
stream is caught by its CID and the size recorded in the index.

``FileCipher`` holds no mutable state after construction, so one instance may
be used from several worker threads at once.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jwtfs.crypto.keys import MasterKey
from jwtfs.errors import IntegrityError

MAGIC = b"JWFS"
FORMAT_VERSION = 1
HEADER_SIZE = 32
FILE_ID_SIZE = 16
# 96-bit nonces are GCM's native IV length (SP 800-38D, 5.2.1.1); any other
# length is hashed into the counter block, which only weakens the bounds.
NONCE_SIZE = 12
# The full 128-bit tag; truncated tags trade forgery resistance for nothing.
TAG_SIZE = 16
SEGMENT_OVERHEAD = NONCE_SIZE + TAG_SIZE
DEFAULT_SEGMENT_SIZE = 65536
MIN_SEGMENT_SIZE = 4096
MAX_SEGMENT_SIZE = 1 << 20

# The HKDF info string names the format version and the key's purpose, so a key
# derived for a later version or another purpose can never equal this one.
_KDF_INFO = b"jwtfs v1 segment key"
_FILE_KEY_SIZE = 32

# magic, version, reserved, segment size, file id, reserved
_HEADER = struct.Struct(">4sB3sI16s4s")
_INDEX = struct.Struct(">Q")
_MAX_INDEX = (1 << 64) - 1
_ZERO_NONCE = bytes(NONCE_SIZE)

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What the segment functions accept as input: anything with bytes in it."""


class SegmentIntegrityError(IntegrityError):
    """One segment failed authentication or has an impossible length.

    ``segment`` is the 0-based index of the failing segment; the message names
    it too, and never contains key or plaintext bytes.
    """

    def __init__(self, segment: int, reason: str) -> None:
        super().__init__(f"segment {segment}: {reason}")
        self.segment = segment
        self.reason = reason

    def __reduce__(self) -> tuple[type[SegmentIntegrityError], tuple[int, str]]:
        return (type(self), (self.segment, self.reason))


def _valid_segment_size(segment_size: int) -> bool:
    return (
        MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
        and segment_size & (segment_size - 1) == 0
    )


@dataclass(frozen=True, slots=True)
class Header:
    """The 32 bytes at the start of every stream."""

    segment_size: int
    file_id: bytes

    def __post_init__(self) -> None:
        if not _valid_segment_size(self.segment_size):
            raise ValueError(
                f"segment size {self.segment_size} is not a power of two from "
                f"{MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE}"
            )
        if len(self.file_id) != FILE_ID_SIZE:
            raise ValueError(f"a file id is {FILE_ID_SIZE} bytes")

    def pack(self) -> bytes:
        """Return the header's 32 bytes."""
        return _HEADER.pack(
            MAGIC, FORMAT_VERSION, bytes(3), self.segment_size, self.file_id, bytes(4)
        )

    @classmethod
    def unpack(cls, data: Buffer) -> Header:
        """Parse the header at the start of ``data`` (a stream or its head).

        Only the first 32 bytes are read, so a whole stream may be passed.

        Raises:
            IntegrityError: ``data`` is shorter than a header, or the magic,
                version, a reserved byte or the segment size is wrong.
        """
        if len(data) < HEADER_SIZE:
            raise IntegrityError(
                f"stream of {len(data)} bytes is shorter than its "
                f"{HEADER_SIZE}-byte header"
            )
        magic, version, reserved1, size, file_id, reserved2 = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise IntegrityError("stream header does not start with b'JWFS'")
        if version != FORMAT_VERSION:
            raise IntegrityError(f"stream format version {version} is not supported")
        if reserved1 != bytes(3) or reserved2 != bytes(4):
            raise IntegrityError("stream header has non-zero reserved bytes")
        if not _valid_segment_size(size):
            raise IntegrityError(f"stream header has invalid segment size {size}")
        return cls(segment_size=size, file_id=file_id)


def new_header(segment_size: int = DEFAULT_SEGMENT_SIZE) -> Header:
    """Return a header with a fresh random file id.

    Raises:
        ValueError: ``segment_size`` is not a power of two from 4096 to 1 MiB.
    """
    return Header(segment_size=segment_size, file_id=os.urandom(FILE_ID_SIZE))


def _derive_file_key(key: MasterKey, file_id: bytes) -> bytes:
    # The file id is the HKDF salt: random per stream, public, and enough on its
    # own to make each file key independent of every other.
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=_FILE_KEY_SIZE,
        salt=file_id,
        info=_KDF_INFO,
    )
    return hkdf.derive(key.raw)


class FileCipher:
    """Encrypts and decrypts the segments of one stream.

    The file key is derived once; the AES-GCM object is created once and only
    read afterwards, and each call builds its own OpenSSL context, so calls
    from several threads do not interfere.
    """

    __slots__ = ("header", "_aead", "_aad_prefix", "_segment_size", "_stored_size")

    def __init__(self, key: MasterKey, header: Header) -> None:
        self.header = header
        self._aead = AESGCM(_derive_file_key(key, header.file_id))
        # The whole header is authenticated with every segment: it binds the
        # file id (no moving segments between files) and the format parameters.
        self._aad_prefix = header.pack()
        self._segment_size = header.segment_size
        self._stored_size = header.segment_size + SEGMENT_OVERHEAD

    def __repr__(self) -> str:
        return f"FileCipher({self.header!r})"

    def _aad(self, index: int) -> bytes:
        if not 0 <= index <= _MAX_INDEX:
            raise ValueError(f"segment index {index} is out of range")
        return self._aad_prefix + _INDEX.pack(index)

    def encrypt_segment(
        self, index: int, plaintext: Buffer, *, _nonce: bytes | None = None
    ) -> bytes:
        """Return the stored form of plaintext segment ``index``.

        ``_nonce`` exists for the test vectors only; leave it alone.

        Raises:
            ValueError: ``plaintext`` is empty or longer than the segment size,
                or ``index`` is negative or beyond 2**64 - 1.
        """
        if not 0 < len(plaintext) <= self._segment_size:
            raise ValueError(
                f"a plaintext segment is 1 to {self._segment_size} bytes, "
                f"not {len(plaintext)}"
            )
        nonce = os.urandom(NONCE_SIZE) if _nonce is None else _nonce
        return nonce + self._aead.encrypt(nonce, plaintext, self._aad(index))

    def decrypt_segment(self, index: int, stored: Buffer) -> bytes:
        """Return the plaintext of stored segment ``index``.

        A stored segment of zero bytes only (a hole) reads as zeros of its
        length minus 28.

        Raises:
            SegmentIntegrityError: the tag does not verify, or the stored length
                is 28 or less or more than the segment size plus 28.
            ValueError: ``index`` is negative or beyond 2**64 - 1.
        """
        size = len(stored)
        if not SEGMENT_OVERHEAD < size <= self._stored_size:
            raise SegmentIntegrityError(
                index, f"stored length {size} is impossible for a segment"
            )
        aad = self._aad(index)
        view = memoryview(stored)
        nonce = view[:NONCE_SIZE]
        # A random nonce is all zero with probability 2**-96, so checking it
        # first keeps the full zero scan off the path of ordinary segments.
        if nonce == _ZERO_NONCE and view == bytes(size):
            return bytes(size - SEGMENT_OVERHEAD)
        try:
            return self._aead.decrypt(nonce, view[NONCE_SIZE:], aad)
        except InvalidTag as exc:
            raise SegmentIntegrityError(index, "authentication failed") from exc

    def encrypt_segments(
        self,
        first_index: int,
        plaintext: Buffer,
        *,
        _nonces: list[bytes] | None = None,
    ) -> bytes:
        """Encrypt ``plaintext`` as consecutive segments from ``first_index``.

        Pieces are S bytes, the last one possibly shorter; an empty plaintext
        gives an empty result. ``_nonces`` (one per piece) is for the test
        vectors only.

        Raises:
            ValueError: an index is out of range, or ``_nonces`` has the wrong
                count.
        """
        view = memoryview(plaintext)
        step = self._segment_size
        starts = range(0, len(view), step)
        if _nonces is not None and len(_nonces) != len(starts):
            raise ValueError(f"{len(starts)} nonces needed, {len(_nonces)} given")
        parts = []
        for k, start in enumerate(starts):
            nonce = os.urandom(NONCE_SIZE) if _nonces is None else _nonces[k]
            aad = self._aad(first_index + k)
            parts.append(nonce)
            parts.append(self._aead.encrypt(nonce, view[start : start + step], aad))
        return b"".join(parts)

    def decrypt_segments(self, first_index: int, stored: Buffer) -> bytes:
        """Decrypt consecutive stored segments starting at ``first_index``.

        ``stored`` is cut every S + 28 bytes; only its last piece may be
        shorter. An empty ``stored`` gives an empty result.

        Raises:
            SegmentIntegrityError: a segment fails; ``.segment`` is its index.
            ValueError: an index is out of range.
        """
        view = memoryview(stored)
        step = self._stored_size
        parts = [
            self.decrypt_segment(first_index + k, view[start : start + step])
            for k, start in enumerate(range(0, len(view), step))
        ]
        return b"".join(parts)


def segment_stored_size(segment_size: int) -> int:
    """Return the stored size of a full segment: S + 28."""
    return segment_size + SEGMENT_OVERHEAD


def segment_offset(segment_size: int, index: int) -> int:
    """Return where stored segment ``index`` starts in the stream."""
    return HEADER_SIZE + index * (segment_size + SEGMENT_OVERHEAD)


def stream_length(segment_size: int, plaintext_length: int) -> int:
    """Return the stream length of a file of ``plaintext_length`` bytes.

    Raises:
        ValueError: ``plaintext_length`` is negative.
    """
    if plaintext_length < 0:
        raise ValueError(f"negative plaintext length {plaintext_length}")
    full, tail = divmod(plaintext_length, segment_size)
    last = tail + SEGMENT_OVERHEAD if tail else 0
    return HEADER_SIZE + full * (segment_size + SEGMENT_OVERHEAD) + last


def plaintext_length(segment_size: int, stream_length: int) -> int:
    """Return the plaintext length of a stream of ``stream_length`` bytes.

    Raises:
        IntegrityError: no stream can have this length: shorter than the
            header, or ending in a piece too short to be a segment.
    """
    if stream_length == HEADER_SIZE:
        return 0
    if stream_length < HEADER_SIZE:
        raise IntegrityError(
            f"stream of {stream_length} bytes is shorter than its "
            f"{HEADER_SIZE}-byte header"
        )
    full, tail = divmod(stream_length - HEADER_SIZE, segment_size + SEGMENT_OVERHEAD)
    if tail == 0:
        return full * segment_size
    if tail > SEGMENT_OVERHEAD:
        return full * segment_size + tail - SEGMENT_OVERHEAD
    raise IntegrityError(
        f"stream of {stream_length} bytes ends in a {tail}-byte piece, too short "
        "to be a segment"
    )


def segments_for_range(segment_size: int, offset: int, length: int) -> range:
    """Return the indexes of the segments that plaintext bytes
    ``[offset, offset + length)`` fall in; empty when ``length`` is 0.

    Raises:
        ValueError: ``offset`` or ``length`` is negative.
    """
    if offset < 0 or length < 0:
        raise ValueError(f"invalid byte range at {offset} of length {length}")
    first = offset // segment_size
    if length == 0:
        return range(first, first)
    return range(first, (offset + length - 1) // segment_size + 1)
