"""The embedded content-addressed store: whole streams plus their DAG nodes.

Layout under the store's root (directories 0700, files 0400):

    streams/<cid[-2:]>/<cid>    one ciphertext stream, named by its root CID
    nodes/<cid[-2:]>/<cid>      one dag-pb node of some stream's DAG

Streams are kept whole rather than cut into blocks: reads are ``pread`` on one
file, and a leaf block is a slice of it whose position comes from walking the
stored nodes. The last two characters of a base32 CID are uniformly spread,
so they shard the directories evenly.

Nodes are derived data: every one can be recomputed from its stream. They are
therefore written without fsync, checked against their CID on every read,
and rebuilt from the stream when missing or damaged. This also covers the one
case where two distinct streams share a node (identical runs of 174 aligned
chunks): ``remove_stream`` deletes the shared node with the first stream and
the other stream rebuilds it on its next use.

Every method is synchronous and may block on disk I/O and hashing; callers run
them in worker threads. ``OSError`` is translated here: ``ENOSPC`` and
``EDQUOT`` become ``StoreFullError``, anything else ``StoreError``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jwtfs.blocks.cid import RAW, Cid, CidError, cid_codec, normalize_cid, verify_block
from jwtfs.blocks.unixfs import CHUNK_SIZE, Dag, build_dag_from_file, decode_spans
from jwtfs.errors import IntegrityError, NotFoundError, StoreError, StoreFullError

log = logging.getLogger(__name__)

_DIR_MODE = 0o700
_FILE_MODE = 0o400
# A layout lists every leaf of one stream (one entry per 256 KiB); a handful
# covers the streams being served or pinned at any one time.
_LAYOUT_CACHE_SIZE = 8


@dataclass(frozen=True)
class StoreUsage:
    """How much the store holds: stream count and bytes allocated on disk."""

    streams: int
    bytes: int


@dataclass(frozen=True)
class _Layout:
    nodes: frozenset[Cid]
    leaves: dict[Cid, tuple[int, int]]


class BlockStore:
    """Streams and DAG nodes in sharded directories under ``root``."""

    def __init__(self, root: Path) -> None:
        """Open the store at ``root``, creating its directories if needed.

        Raises:
            StoreError: the directories cannot be created.
        """
        self.root = root
        self._streams = root / "streams"
        self._nodes = root / "nodes"
        self._layouts: OrderedDict[Cid, _Layout] = OrderedDict()
        self._lock = threading.Lock()
        try:
            root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            self._streams.mkdir(mode=_DIR_MODE, exist_ok=True)
            self._nodes.mkdir(mode=_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise _translate(exc, f"cannot create block store in {root}") from exc

    def add_stream(self, src: Path, *, durable: bool, dag: Dag | None = None) -> Dag:
        """Move the file ``src`` into the store under its CID and return its DAG.

        ``src`` must be on the same filesystem as the store. When the stream is
        already present, ``src`` is unlinked instead. With ``durable``, the
        stream and the directories are fsync'd, so the stream survives a crash
        once this returns. On failure ``src`` is left where it was. ``dag``,
        when given, is the DAG of ``src`` computed while it was written; the
        caller vouches for it and the file is not hashed again.

        Raises:
            StoreFullError: the filesystem is full.
            StoreError: any other I/O failure, including a missing ``src``.
        """
        written: list[Cid] = []
        try:
            if dag is None:
                dag = build_dag_from_file(src)
            self._write_nodes(dag.nodes, written=written)
            target = self._stream_file(dag.root)
            created = _make_dir(target.parent)
            if target.exists():
                src.unlink()
            else:
                self._move_into_place(src, target, durable=durable)
            if durable:
                _fsync_dir(src.parent)
                if created:
                    _fsync_dir(self._streams)
        except OSError as exc:
            self._discard_nodes(written)
            raise _translate(exc, "cannot add a stream to the block store") from exc
        log.debug("stored stream %s (%d bytes)", dag.root, dag.length)
        return dag

    def has_stream(self, cid: Cid) -> bool:
        """Tell whether the stream with root ``cid`` is stored.

        Raises:
            CidError: ``cid`` is not a valid CID.
        """
        return self._stream_file(cid).is_file()

    def stream_path(self, cid: Cid) -> Path:
        """Return the path of a stored stream's file.

        Raises:
            NotFoundError: the stream is not stored.
            CidError: ``cid`` is not a valid CID.
        """
        path = self._stream_file(cid)
        if not path.is_file():
            raise NotFoundError(f"stream {cid} is not in the block store")
        return path

    def remove_stream(self, cid: Cid) -> None:
        """Delete a stream and the nodes of its DAG; a missing stream is fine.

        Raises:
            StoreError: a file could not be removed.
            CidError: ``cid`` is not a valid CID.
        """
        with self._lock:
            self._layouts.pop(cid, None)
        try:
            nodes = self._stored_node_cids(cid)
            self._stream_file(cid).unlink(missing_ok=True)
            for node in nodes:
                self._node_file(node).unlink(missing_ok=True)
        except OSError as exc:
            raise _translate(exc, f"cannot remove stream {cid}") from exc
        log.debug("removed stream %s and %d nodes", cid, len(nodes))

    def read_range(self, cid: Cid, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes of a stream at ``offset``; short at EOF.

        Raises:
            NotFoundError: the stream is not stored.
            StoreError: the read failed.
            ValueError: ``offset`` or ``length`` is negative.
        """
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        try:
            fd = os.open(self._stream_file(cid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFoundError(f"stream {cid} is not in the block store") from exc
        except OSError as exc:
            raise _translate(exc, f"cannot open stream {cid}") from exc
        try:
            return _pread_full(fd, offset, length)
        except OSError as exc:
            raise _translate(exc, f"cannot read stream {cid}") from exc
        finally:
            os.close(fd)

    def usage(self) -> StoreUsage:
        """Count the streams and the bytes that streams and nodes take on disk.

        Raises:
            StoreError: a directory could not be listed.
        """
        try:
            streams, stream_bytes = _scan(self._streams)
            _, node_bytes = _scan(self._nodes)
        except OSError as exc:
            raise _translate(exc, "cannot measure the block store") from exc
        return StoreUsage(streams, stream_bytes + node_bytes)

    def iter_streams(self) -> Iterator[Cid]:
        """Yield the root CID of every stored stream, in sorted order.

        Raises:
            StoreError: a directory could not be listed.
        """
        try:
            shards = sorted(entry.name for entry in os.scandir(self._streams))
            for shard in shards:
                names = sorted(os.listdir(self._streams / shard))
                yield from (Cid(name) for name in names if not name.startswith("."))
        except OSError as exc:
            raise _translate(exc, "cannot list the block store") from exc

    def get_block(self, root: Cid, cid: Cid) -> bytes:
        """Return one block of the DAG rooted at ``root``, checked against ``cid``.

        Raises:
            NotFoundError: the stream is not stored, or ``cid`` is not in its DAG.
            IntegrityError: the stored bytes do not match their CID.
            StoreError: an I/O failure.
            CidError: ``root`` or ``cid`` is not a valid CID.
        """
        layout = self._layout(root)
        if cid in layout.nodes:
            return self._read_node(root, cid)
        span = layout.leaves.get(cid)
        if span is None:
            raise NotFoundError(f"block {cid} is not in the DAG of {root}")
        data = self.read_range(root, *span)
        _check_leaf(root, cid, data, span[1])
        return data

    def iter_blocks(self, root: Cid) -> Iterator[tuple[Cid, bytes]]:
        """Yield every distinct block of the DAG once, root first, depth first.

        Children follow in link order; a block met again (identical chunks)
        is not repeated. Every block is checked against its CID.

        Raises:
            NotFoundError: the stream is not stored.
            IntegrityError: the stored bytes do not match their CID.
            StoreError: an I/O failure.
            CidError: ``root`` is not a valid CID.
        """
        path = self.stream_path(root)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _translate(exc, f"cannot open stream {root}") from exc
        try:
            if cid_codec(root) == RAW:
                yield root, self._read_raw_root(fd, root)
                return
            yield from self._walk(fd, root, root, 0, set())
        except OSError as exc:
            raise _translate(exc, f"cannot read stream {root}") from exc
        finally:
            os.close(fd)

    def _walk(
        self, fd: int, root: Cid, cid: Cid, base: int, seen: set[Cid]
    ) -> Iterator[tuple[Cid, bytes]]:
        seen.add(cid)
        node = self._read_node(root, cid)
        yield cid, node
        for child, offset, length in decode_spans(node):
            if child in seen:
                continue
            if cid_codec(child) != RAW:
                yield from self._walk(fd, root, child, base + offset, seen)
                continue
            seen.add(child)
            data = _pread_full(fd, base + offset, length)
            _check_leaf(root, child, data, length)
            yield child, data

    def _read_raw_root(self, fd: int, root: Cid) -> bytes:
        data = _pread_full(fd, 0, CHUNK_SIZE + 1)
        if len(data) > CHUNK_SIZE:
            raise IntegrityError(f"stream {root} is longer than its raw CID allows")
        verify_block(root, data)
        return data

    def _layout(self, root: Cid) -> _Layout:
        with self._lock:
            layout = self._layouts.get(root)
            if layout is not None:
                self._layouts.move_to_end(root)
                return layout
        path = self.stream_path(root)
        if cid_codec(root) == RAW:
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise _translate(exc, f"cannot stat stream {root}") from exc
            if size > CHUNK_SIZE:
                raise IntegrityError(f"stream {root} is longer than its raw CID allows")
            layout = _Layout(frozenset(), {root: (0, size)})
        else:
            nodes: set[Cid] = set()
            leaves: dict[Cid, tuple[int, int]] = {}
            self._collect(root, root, 0, nodes, leaves)
            layout = _Layout(frozenset(nodes), leaves)
        with self._lock:
            self._layouts[root] = layout
            while len(self._layouts) > _LAYOUT_CACHE_SIZE:
                self._layouts.popitem(last=False)
        return layout

    def _collect(
        self,
        root: Cid,
        cid: Cid,
        base: int,
        nodes: set[Cid],
        leaves: dict[Cid, tuple[int, int]],
    ) -> None:
        nodes.add(cid)
        for child, offset, length in decode_spans(self._read_node(root, cid)):
            if cid_codec(child) == RAW:
                leaves.setdefault(child, (base + offset, length))
            elif child not in nodes:
                self._collect(root, child, base + offset, nodes, leaves)

    def _read_node(self, root: Cid, cid: Cid) -> bytes:
        """Return a node of ``root``'s DAG, rebuilding the nodes if need be."""
        try:
            data = self._node_file(cid).read_bytes()
            verify_block(cid, data)
            return data
        except FileNotFoundError:
            log.warning("node %s of stream %s is missing; rebuilding", cid, root)
        except IntegrityError:
            log.warning("node %s of stream %s is damaged; rebuilding", cid, root)
        except OSError as exc:
            raise _translate(exc, f"cannot read node {cid}") from exc
        nodes = self._rebuild_nodes(root)
        if cid not in nodes:
            raise NotFoundError(f"node {cid} is not in the DAG of {root}")
        return nodes[cid]

    def _rebuild_nodes(self, root: Cid) -> dict[Cid, bytes]:
        try:
            dag = build_dag_from_file(self.stream_path(root))
            if dag.root != root:
                raise IntegrityError(f"stream {root} does not match its CID")
            self._write_nodes(dag.nodes, replace=True)
        except OSError as exc:
            raise _translate(exc, f"cannot rebuild the nodes of {root}") from exc
        return dag.nodes

    def _stored_node_cids(self, root: Cid) -> list[Cid]:
        """List the nodes of ``root``'s DAG that are stored and intact."""
        found: list[Cid] = []
        pending = [root]
        while pending:
            cid = pending.pop()
            if cid_codec(cid) == RAW or cid in found:
                continue
            try:
                data = self._node_file(cid).read_bytes()
                verify_block(cid, data)
                spans = decode_spans(data)
            except (FileNotFoundError, IntegrityError):
                continue
            found.append(cid)
            pending.extend(child for child, _, _ in spans)
        return found

    def _write_nodes(
        self,
        nodes: dict[Cid, bytes],
        *,
        replace: bool = False,
        written: list[Cid] | None = None,
    ) -> None:
        """Write nodes through a temporary file, so none is ever seen half done.

        Existing node files are kept unless ``replace`` (used to repair them);
        the CIDs of files this call created are appended to ``written``.
        """
        for cid, data in nodes.items():
            target = self._node_file(cid)
            if not replace and target.exists():
                continue
            _make_dir(target.parent)
            tmp = target.with_name(f".{cid}.{secrets.token_hex(4)}.tmp")
            try:
                _write_new_file(tmp, data)
                os.rename(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if written is not None:
                written.append(cid)

    def _discard_nodes(self, cids: list[Cid]) -> None:
        """Best-effort removal of the nodes of a stream that was not added."""
        for cid in cids:
            with contextlib.suppress(OSError):
                self._node_file(cid).unlink(missing_ok=True)

    def _move_into_place(self, src: Path, target: Path, *, durable: bool) -> None:
        os.chmod(src, _FILE_MODE)
        if durable:
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(src, target)
        if durable:
            _fsync_dir(target.parent)

    def _stream_file(self, cid: Cid) -> Path:
        return self._streams / _shard(cid) / cid

    def _node_file(self, cid: Cid) -> Path:
        return self._nodes / _shard(cid) / cid


def _shard(cid: Cid) -> str:
    # Only the canonical spelling may name a file: this also keeps a hostile
    # string such as "../x" from ever reaching the filesystem.
    if normalize_cid(cid) != cid:
        raise CidError(f"not a canonical base32 CIDv1: {cid!r}")
    return cid[-2:]


def _check_leaf(root: Cid, cid: Cid, data: bytes, length: int) -> None:
    if len(data) != length:
        raise IntegrityError(f"stream {root} is shorter than its DAG says")
    verify_block(cid, data)


def _pread_full(fd: int, offset: int, length: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        length -= len(part)
    return b"".join(parts)


def _write_new_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _make_dir(path: Path) -> bool:
    """Create a directory (0700) unless it exists; tell whether it was created."""
    try:
        path.mkdir(mode=_DIR_MODE)
    except FileExistsError:
        return False
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(top: Path) -> tuple[int, int]:
    """Count the files under ``top``'s shards and their allocated bytes."""
    count = 0
    allocated = 0
    for shard in os.scandir(top):
        if not shard.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(shard.path):
            if entry.name.startswith("."):
                continue
            count += 1
            # st_blocks counts 512-byte units whatever the filesystem's block
            # size, and sparse or compressed files report what they really use.
            allocated += entry.stat(follow_symlinks=False).st_blocks * 512
    return count, allocated


def _translate(exc: OSError, message: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"{message}: disk full")
    return StoreError(f"{message}: {exc.strerror or exc}")
