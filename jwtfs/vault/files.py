"""Open files: the write staging of one inode, shared by all its handles.

A file's content is one ciphertext stream (``docs/FORMAT.md``). While a file is
being changed, its segments live in two places:

* a small cache of plaintext segments in memory, at most ``CACHE_SEGMENTS``
  of them; a write patches the cached segment and marks it dirty;
* a staging stream under ``staging/``: a private, writable copy of the
  committed stream, made on the first change that must reach the disk. Dirty
  segments are encrypted and written into it when the cache fills up, before
  a truncate, and on commit. Staging holds ciphertext only.

A commit (on close and fsync) moves the staging stream into the block store,
where its CID is computed, and records a new version in the index. The next
change copies the committed stream into staging again.

A staging stream written front to back from its header on (a new file, or one
truncated to nothing first) is hashed while it is written, so the commit need
not read it again, and uploaded to the node while it is written (``uploads``),
so its pin follows soon after the close.

Invariant: a segment that is in the cache is the truth; a segment that is not
is correct on disk for the current size. Growing the file therefore loads and
pads the old last segment into the cache first, and shrinking cuts the staging
stream at once, so that bytes beyond the new end can never come back.

Every method that touches state runs under the inode's ``lock``: pyfuse3
interleaves requests at each ``await``, and a write that reads a segment,
awaits the decryption and writes it back would otherwise lose a concurrent
write to the same segment.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from jwtfs.blocks.unixfs import Dag, DagBuilder
from jwtfs.crypto.segments import (
    FileCipher,
    SegmentIntegrityError,
    segment_offset,
    segment_stored_size,
    stream_length,
)
from jwtfs.errors import IntegrityError, StoreError, StoreFullError
from jwtfs.vault.uploads import GrowingStream

if TYPE_CHECKING:
    from jwtfs.vault.vault import Vault

log = logging.getLogger(__name__)

# 32 segments of 64 KiB: 2 MiB of plaintext per open file at most. Half of it
# may be dirty before it is written out, so one flush encrypts 1 MiB at once.
CACHE_SEGMENTS = 32
DIRTY_SEGMENTS = 16
# Below this many bytes of work a thread hop (0.15-0.2 ms) costs more than the
# work itself, which then runs on the event loop (encrypting 256 KiB takes
# about 0.15 ms).
INLINE_BYTES = 256 * 1024
INLINE_READ_BYTES = 64 * 1024
# A read that continues where the last one ended and must go to the disk
# decrypts this many further segments (1 MiB) in the same thread hop and
# pread. The kernel asks for 128 KiB at a time, so the next seven requests are
# answered from memory instead of each paying a hop and a disk wait.
READ_AHEAD_SEGMENTS = 16

T = TypeVar("T")


def _os_error(err: OSError, what: str) -> StoreError:
    if err.errno in (28, 122):  # ENOSPC, EDQUOT
        return StoreFullError(f"{what}: {err.strerror}")
    return StoreError(f"{what}: {err.strerror}")


class OpenFile:
    """The live state of one regular file that has open handles."""

    def __init__(
        self,
        vault: Vault,
        inode: int,
        cipher: FileCipher,
        size: int,
        base_cid: str | None,
    ) -> None:
        self.vault = vault
        self.inode = inode
        self.cipher = cipher
        self.segment_size = cipher.header.segment_size
        self.size = size
        self.base_cid = base_cid
        self.handles = 0
        self.changed = False
        # Set by a change of content, cleared once the index holds the time.
        self.mtime_ns: int | None = None
        self.lock = trio.Lock()
        self._cache: OrderedDict[int, bytearray] = OrderedDict()
        self._dirty: set[int] = set()
        self._staging: Path | None = None
        self._staging_fd: int | None = None
        # The CID of a staging stream written front to back is computed as it
        # is written, so the commit need not read and hash it again. Any other
        # order of writes drops the builder and the commit hashes the file.
        self._hasher: DagBuilder | None = None
        self._hashed_upto = 0
        # The upload of that same front, while the hasher lives.
        self._upload: GrowingStream | None = None
        self._base_fd: int | None = None
        # Clean segments decrypted ahead of a sequential reader; dropped by
        # every change of content, so they never outlive the bytes they hold.
        self._ahead: dict[int, bytearray] = {}
        self._next_read = 0

    @property
    def empty_and_new(self) -> bool:
        """Empty, and never committed: nothing a commit could lose."""
        return self.size == 0 and self.base_cid is None

    # Reading

    async def read(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` plaintext bytes at ``offset``.

        Raises:
            IntegrityError: a segment failed authentication.
            StoreError: the stream could not be read.
        """
        async with self.lock:
            end = min(self.size, offset + length)
            if offset >= end:
                return b""
            size = self.segment_size
            first, last = offset // size, (end - 1) // size
            sequential = offset == self._next_read
            self._next_read = end
            missing = [
                i
                for i in range(first, last + 1)
                if i not in self._cache and i not in self._ahead
            ]
            if missing:
                extra = self._segments_ahead(last) if sequential else []
                self._ahead.update(await self._load_many(missing + extra))
            parts = []
            for i in range(first, last + 1):
                plain = self._cache.get(i)
                if plain is None:
                    plain = self._ahead[i]
                start = i * size
                parts.append(plain[max(offset, start) - start : end - start])
            for i in [i for i in self._ahead if i < last]:
                del self._ahead[i]
            return b"".join(parts)

    def _segments_ahead(self, last: int) -> list[int]:
        """Segments after ``last`` worth decrypting now for a sequential reader:
        only from a local stream, since a fetch from the node takes what the
        read needs and no more."""
        if self._base_is_remote():
            return []
        end = min(last + 1 + READ_AHEAD_SEGMENTS, -(-self.size // self.segment_size))
        return [
            i
            for i in range(last + 1, end)
            if i not in self._cache and i not in self._ahead
        ]

    def _logical_length(self, index: int) -> int:
        return max(0, min(self.segment_size, self.size - index * self.segment_size))

    async def _segment(self, index: int) -> bytearray:
        """The cached segment, loaded from disk if needed, at its logical length."""
        plain = self._cache.get(index)
        if plain is None:
            plain = (await self._load_many([index]))[index]
            self._remember(index, plain)
        return plain

    async def _load_many(self, indexes: list[int]) -> dict[int, bytearray]:
        lengths = {i: self._logical_length(i) for i in indexes}
        if self._base_is_remote():
            stored = await self._fetch_segments(indexes)
            work = sum(len(data) for data in stored.values())
            return await self._in_thread(
                lambda: self._decrypt_fetched(stored, lengths), work=work
            )
        fd = self._read_fd()
        if fd is None:
            return {i: bytearray(n) for i, n in lengths.items()}
        # Reads may wait for the disk: only a single small segment stays here.
        return await self._in_thread(
            lambda: self._decrypt_from(fd, lengths),
            work=sum(lengths.values()),
            inline_below=INLINE_READ_BYTES,
        )

    def _base_is_remote(self) -> bool:
        """True when the committed stream was evicted and must come from the node."""
        if self._staging_fd is not None or self.base_cid is None:
            return False
        if self._base_fd is not None:
            return False
        return not self.vault.store.has_stream(self.vault.as_cid(self.base_cid))

    async def _fetch_segments(self, indexes: list[int]) -> dict[int, bytes]:
        remote = self.vault.remote
        assert self.base_cid is not None
        if remote is None:
            raise StoreError(f"stream {self.base_cid} is not stored locally")
        cid = self.vault.as_cid(self.base_cid)
        stored_size = segment_stored_size(self.segment_size)
        fetched = {}
        for i in indexes:
            try:
                offset = segment_offset(self.segment_size, i)
                fetched[i] = await remote.read(cid, offset, stored_size)
            except IntegrityError:
                self.vault.report_integrity_failure(
                    self.inode, self.base_cid, i, from_node=True
                )
                raise
        return fetched

    def _decrypt_fetched(
        self, stored: dict[int, bytes], lengths: dict[int, int]
    ) -> dict[int, bytearray]:
        return {
            i: self._fit(self._decrypt(i, data) if data else b"", lengths[i])
            for i, data in stored.items()
        }

    @staticmethod
    def _fit(plain: bytes, length: int) -> bytearray:
        result = bytearray(plain)
        if len(result) < length:
            result.extend(bytes(length - len(result)))
        del result[length:]
        return result

    def _decrypt_from(self, fd: int, lengths: dict[int, int]) -> dict[int, bytearray]:
        """Decrypt the segments of ``lengths`` from ``fd``, one pread per run of
        consecutive segments."""
        stored_size = segment_stored_size(self.segment_size)
        result = {}
        for first, count in _runs(sorted(lengths)):
            try:
                data = os.pread(
                    fd, stored_size * count, segment_offset(self.segment_size, first)
                )
            except OSError as err:
                raise _os_error(err, f"reading inode {self.inode}") from err
            view = memoryview(data)
            for k in range(count):
                i = first + k
                stored = view[k * stored_size : (k + 1) * stored_size]
                plain = self._decrypt(i, stored) if stored else b""
                result[i] = self._fit(plain, lengths[i])
        return result

    def _decrypt(self, index: int, stored: bytes | memoryview) -> bytes:
        try:
            return self.cipher.decrypt_segment(index, stored)
        except SegmentIntegrityError as err:
            source = self.base_cid if self._staging is None else "staging"
            self.vault.report_integrity_failure(self.inode, source, index)
            raise IntegrityError(
                f"inode {self.inode}: segment {index} failed authentication"
            ) from err

    def _read_fd(self) -> int | None:
        if self._staging_fd is not None:
            return self._staging_fd
        if self.base_cid is None:
            return None
        if self._base_fd is None:
            path = self.vault.store.stream_path(self.vault.as_cid(self.base_cid))
            try:
                self._base_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as err:
                raise _os_error(err, f"opening stream {self.base_cid}") from err
        return self._base_fd

    def _remember(self, index: int, plain: bytearray) -> None:
        self._cache[index] = plain
        self._cache.move_to_end(index)

    # Writing

    async def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``, growing the file as needed.

        Raises:
            IntegrityError, StoreError, StoreFullError: as for ``read`` and
                when the staging area cannot take the data.
        """
        async with self.lock:
            self._ahead.clear()
            if offset > self.size:
                await self._grow(offset)
            size = self.segment_size
            end = offset + len(data)
            view = memoryview(data)
            for i in range(offset // size, (end - 1) // size + 1 if data else 0):
                start = i * size
                a, b = max(offset, start) - start, min(end, start + size) - start
                chunk = view[start + a - offset : start + b - offset]
                if a == 0 and b >= self._logical_length(i):
                    plain = bytearray(chunk)
                else:
                    plain = await self._segment(i)
                    if len(plain) < b:
                        plain.extend(bytes(b - len(plain)))
                    plain[a:b] = chunk
                self._remember(i, plain)
                self._dirty.add(i)
            self.size = max(self.size, end)
            self.changed = True
            self.mtime_ns = time.time_ns()
            await self._trim_cache()
            return len(data)

    async def _grow(self, new_size: int) -> None:
        """Extend to ``new_size`` with zeros; the gap becomes holes."""
        if self.size % self.segment_size:
            last = self.size // self.segment_size
            plain = await self._segment(last)
            pad = min(self.segment_size, new_size - last * self.segment_size)
            plain.extend(bytes(pad - len(plain)))
            self._dirty.add(last)
        self.size = new_size
        self.changed = True
        self.mtime_ns = time.time_ns()

    async def truncate(self, new_size: int) -> None:
        """Cut or extend the file to ``new_size`` bytes.

        Raises:
            IntegrityError, StoreError, StoreFullError: as for ``write``.
        """
        async with self.lock:
            self._ahead.clear()
            if new_size > self.size:
                await self._grow(new_size)
                return
            if new_size == self.size:
                return
            size = self.segment_size
            keep = -(-new_size // size)
            for i in [i for i in self._cache if i >= keep]:
                del self._cache[i]
                self._dirty.discard(i)
            if new_size % size:
                plain = await self._segment(new_size // size)
                del plain[new_size % size :]
                self._dirty.add(new_size // size)
            self.size = new_size
            self.changed = True
            self.mtime_ns = time.time_ns()
            length = stream_length(size, new_size)
            await self._ensure_staging(length)
            await self._in_thread(lambda: self._truncate_staging(length), work=0)
            self._follow_upload()

    async def _trim_cache(self) -> None:
        if len(self._dirty) >= DIRTY_SEGMENTS:
            await self._flush_dirty(hold_tail=True)
        while len(self._cache) > CACHE_SEGMENTS:
            oldest = next(iter(self._cache))
            if oldest in self._dirty:
                await self._flush_dirty()
            del self._cache[oldest]

    async def _flush_dirty(self, *, hold_tail: bool = False) -> None:
        """Encrypt dirty segments into the staging stream.

        With ``hold_tail``, a partly filled last segment stays dirty in the
        cache while the stream is hashed along: a sequential writer is likely
        to fill it next, and rewriting it on disk would end the hashing.
        """
        length = stream_length(self.segment_size, self.size)
        await self._ensure_staging(length)
        indexes = sorted(self._dirty)
        held: set[int] = set()
        if hold_tail and self._hasher is not None and len(indexes) > 1:
            tail = indexes[-1]
            if self._logical_length(tail) < self.segment_size:
                held.add(indexes.pop())
        batch = [(i, bytes(self._cache[i])) for i in indexes]
        work = sum(len(plain) for _, plain in batch)
        await self._in_thread(lambda: self._write_segments(batch, length), work=work)
        self._dirty = held
        self._follow_upload()

    def _follow_upload(self) -> None:
        """Let the upload see the new front, start it, or abandon it."""
        if self._hasher is None or self._staging is None:
            if self._upload is not None:
                self._upload.abandon()
                self._upload = None
            return
        if self._upload is None or self._upload.ended:
            start = self.vault.push_growing
            self._upload = None if start is None else start(self._staging)
        if self._upload is not None:
            self._upload.advance(self._hashed_upto)

    def _write_segments(self, batch: list[tuple[int, bytes]], length: int) -> None:
        fd = self._staging_fd
        assert fd is not None
        self.vault.check_space(len(batch) * segment_stored_size(self.segment_size))
        if length < self._hashed_upto:
            self._hasher = None
        try:
            if os.fstat(fd).st_size != length:
                os.ftruncate(fd, length)
            for i, plain in batch:
                stored = self.cipher.encrypt_segment(i, plain)
                offset = segment_offset(self.segment_size, i)
                os.pwrite(fd, stored, offset)
                self._hash_along(offset, stored)
        except OSError as err:
            raise _os_error(err, f"staging inode {self.inode}") from err

    def _hash_along(self, offset: int, stored: bytes) -> None:
        if self._hasher is None:
            return
        if offset != self._hashed_upto:
            self._hasher = None
            return
        self._hasher.feed(stored)
        self._hashed_upto += len(stored)

    def _truncate_staging(self, length: int) -> None:
        assert self._staging_fd is not None
        if length < self._hashed_upto:
            self._hasher = None
        try:
            os.ftruncate(self._staging_fd, length)
        except OSError as err:
            raise _os_error(err, f"staging inode {self.inode}") from err

    async def _ensure_staging(self, needed: int) -> None:
        """Create the staging stream, copying at most ``needed`` committed bytes."""
        if self._staging_fd is not None:
            return
        if self._base_is_remote():
            assert self.base_cid is not None
            await self.vault.restore_stream(self.base_cid)
        path = self.vault.new_staging_path(self.inode)
        base = self._read_fd()
        header = self.cipher.header.pack()

        def create() -> int:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                # When nothing past the header is kept, the stream starts anew
                # as a new file's does (every version has the same header).
                kept = 0 if base is None else min(needed, os.fstat(base).st_size)
                if kept <= len(header):
                    os.write(fd, header)
                    self._hasher = DagBuilder()
                    self._hasher.feed(header)
                    self._hashed_upto = len(header)
                else:
                    assert base is not None
                    self._hasher = None
                    _copy_prefix(base, fd, needed)
            except OSError as err:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise _os_error(err, f"staging inode {self.inode}") from err
            return fd

        try:
            work = 0 if base is None else needed
            self._staging_fd = await self._in_thread(create, work=work)
        except OSError as err:
            raise _os_error(err, f"staging inode {self.inode}") from err
        self._staging = path
        self._close_base()

    # Committing

    async def commit(self, *, durable: bool) -> None:
        """Turn the staged content into a new version in the store and index.

        Raises:
            StoreError, StoreFullError: the store or the index could not take
                it; the staged content stays, so a later commit can retry.
        """
        async with self.lock:
            if not self.changed:
                if durable:
                    self.vault.index.sync()
                return
            length = stream_length(self.segment_size, self.size)
            await self._ensure_staging(length)
            if self._dirty or self._staging_length() != length:
                await self._flush_dirty()
            staging = self._staging
            assert staging is not None and self._staging_fd is not None
            os.close(self._staging_fd)
            self._staging_fd = None
            known = self._finished_dag(length)
            upload, self._upload = self._upload, None
            if upload is not None and known is None:
                upload.abandon()
                upload = None
            try:
                # An fsync may take long: never on the event loop.
                work = length if not durable else INLINE_BYTES
                if known is not None:
                    work = 0 if not durable else INLINE_BYTES
                dag = await self._in_thread(
                    lambda: self.vault.store.add_stream(
                        staging, durable=durable, dag=known
                    ),
                    work=work,
                )
            except BaseException:
                if upload is not None:
                    upload.abandon()
                self._reopen_staging(staging)
                raise
            self._staging = None
            old = self.base_cid
            self.base_cid = str(dag.root)
            self.changed = False
            self._record(dag, length, old, upload, durable=durable)

    def _record(
        self,
        dag: Dag,
        length: int,
        old: str | None,
        upload: GrowingStream | None,
        *,
        durable: bool,
    ) -> None:
        """Index the committed ``dag``; tell its upload, if any, where it ends."""
        if upload is not None and upload.ended:
            upload = None  # failed before the end; the pin queue pushes it
        try:
            version_id = self.vault.record_version(
                self.inode,
                dag,
                self.size,
                old,
                durable=durable,
                uploading=upload is not None,
            )
        except BaseException:
            if upload is not None:
                upload.abandon()
            raise
        if upload is not None:
            upload.finish(length, str(dag.root), version_id)

    def _finished_dag(self, length: int) -> Dag | None:
        """The DAG hashed along the writes, when they covered the whole stream."""
        hasher, self._hasher = self._hasher, None
        if hasher is None or self._hashed_upto != length:
            return None
        return hasher.finish()

    def _staging_length(self) -> int:
        assert self._staging_fd is not None
        return os.fstat(self._staging_fd).st_size

    def _reopen_staging(self, path: Path) -> None:
        if path.exists():
            self._staging_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        else:
            self._staging = None

    # Teardown

    def _close_base(self) -> None:
        if self._base_fd is not None:
            os.close(self._base_fd)
            self._base_fd = None

    def discard(self) -> None:
        """Drop every staged change and close descriptors (file deleted)."""
        if self._upload is not None:
            self._upload.abandon()
            self._upload = None
        self._close_base()
        if self._staging_fd is not None:
            os.close(self._staging_fd)
            self._staging_fd = None
        if self._staging is not None:
            self._staging.unlink(missing_ok=True)
            self._staging = None
        self._cache.clear()
        self._ahead.clear()
        self._dirty.clear()
        self.changed = False

    def close(self) -> None:
        """Close descriptors of a file whose changes are all committed."""
        assert not self.changed
        self.discard()

    async def _in_thread(
        self, fn: Callable[[], T], *, work: int, inline_below: int = INLINE_BYTES
    ) -> T:
        """Run ``fn`` in a worker thread, or right here when ``work`` (bytes to
        encrypt, hash or copy) is so small that the hop would cost more."""
        if work < inline_below:
            return fn()
        return await trio.to_thread.run_sync(fn, limiter=self.vault.cpu_limiter)


def _runs(indexes: list[int]) -> Iterator[tuple[int, int]]:
    """Split sorted ``indexes`` into runs of consecutive numbers: (first, count)."""
    first = count = 0
    for i in indexes:
        if count and i == first + count:
            count += 1
            continue
        if count:
            yield first, count
        first, count = i, 1
    if count:
        yield first, count


def _copy_prefix(src: int, dst: int, length: int) -> None:
    """Copy the first ``length`` bytes of ``src`` into ``dst`` inside the kernel."""
    total = min(length, os.fstat(src).st_size)
    done = 0
    while done < total:
        n = os.copy_file_range(src, dst, total - done, done, done)
        if n == 0:
            break
        done += n
