"""The vault: files, directories and versions on top of the index and the store.

Everything here follows POSIX semantics and raises ``FilesystemError`` with
the errno a rule violation must give; the fs layer only translates. Metadata
methods are synchronous (short SQLite transactions on the event loop thread);
content goes through ``OpenFile``, whose CPU and disk work runs in threads.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import trio

from jwtfs.blocks.cid import Cid
from jwtfs.blocks.store import BlockStore
from jwtfs.blocks.unixfs import Dag
from jwtfs.config import CacheConfig, RetentionConfig
from jwtfs.crypto.keys import MasterKey
from jwtfs.crypto.segments import FileCipher, Header, new_header
from jwtfs.errors import FilesystemError, NotFoundError, StoreError, StoreFullError
from jwtfs.vault.fetch import RemoteReader
from jwtfs.vault.files import OpenFile
from jwtfs.vault.index import Index
from jwtfs.vault.layout import Paths
from jwtfs.vault.schema import ROOT_INODE, InodeRow, VersionRow
from jwtfs.vault.uploads import GrowingStream

log = logging.getLogger(__name__)

NAME_MAX = 255
# Content writes stop this short of a full disk, so the index can still take
# the unlink that frees space (SQLite needs room for its log to delete).
RESERVE_MIN_BYTES = 2 * 1024 * 1024
RESERVE_MAX_BYTES = 64 * 1024 * 1024
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _clamp_time(ns: int | None) -> int | None:
    """Times beyond what 64-bit nanoseconds hold are clamped, as ext4 clamps."""
    if ns is None:
        return None
    return max(-(2**63), min(2**63 - 1, ns))


def check_name(name: bytes) -> None:
    """Refuse names the kernel should never send and names over NAME_MAX."""
    if len(name) > NAME_MAX:
        raise FilesystemError(errno.ENAMETOOLONG, "name longer than 255 bytes")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise FilesystemError(errno.EINVAL, "invalid name")


class Vault:
    """One mounted vault: the tree, the open files, the store."""

    def __init__(
        self,
        paths: Paths,
        key: MasterKey,
        *,
        retention: RetentionConfig | None = None,
        cache: CacheConfig | None = None,
        remote: RemoteReader | None = None,
    ) -> None:
        self.paths = paths
        self.retention = retention or RetentionConfig()
        self.cache = cache or CacheConfig()
        # Reads evicted content; None when no node is configured.
        self.remote = remote
        # Called after each new version, so the pin queue wakes up.
        self.on_new_version: Callable[[], None] | None = None
        # Starts the upload of a staging stream while it is written, when the
        # pin queue can take one (``uploads``).
        self.push_growing: Callable[[Path], GrowingStream | None] | None = None
        self.index = Index(paths.index)
        if not self.index.has_schema():
            raise StoreError(f"{paths.index}: not a jwtfs index; run 'jwtfs init'")
        self.store = BlockStore(paths.store)
        self.key = key
        self.cpu_limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self.open_files: dict[int, OpenFile] = {}
        self._dir_paths: dict[int, bytes] = {ROOT_INODE: b"/"}
        self._staging_names = count()
        self._reported: set[tuple[str | None, int]] = set()
        self._recover()

    def _recover(self) -> None:
        """Drop what a crash left behind: staging copies, nameless inodes, and
        streams no version uses (moved in just before a crash)."""
        for leftover in self.paths.staging.iterdir():
            leftover.unlink()
        for inode in self.index.orphan_inodes():
            self._destroy(inode)
        used = self.index.all_cids()
        for cid in self.store.iter_streams():
            if cid not in used:
                log.info("removing stream %s, which no version uses", cid)
                self.store.remove_stream(cid)

    def close(self) -> None:
        for open_file in self.open_files.values():
            open_file.discard()
        self.open_files.clear()
        self.index.sync()
        self.index.close()

    @staticmethod
    def as_cid(text: str) -> Cid:
        return Cid(text)

    # Lookups

    def inode(self, inode: int) -> InodeRow:
        """Return the row of ``inode``, with the live size of an open file."""
        row = self.index.get_inode(inode)
        if row is None:
            raise NotFoundError(f"inode {inode}")
        open_file = self.open_files.get(inode)
        if open_file is not None:
            row.size = open_file.size
            if open_file.mtime_ns is not None:
                row.mtime_ns = row.ctime_ns = open_file.mtime_ns
        return row

    def lookup(self, parent: int, name: bytes) -> InodeRow:
        check_name(name)
        inode = self.index.lookup(parent, name)
        if inode is None:
            raise FilesystemError(errno.ENOENT)
        return self.inode(inode)

    def directory(self, inode: int) -> InodeRow:
        row = self.inode(inode)
        if not row.is_dir:
            raise FilesystemError(errno.ENOTDIR)
        return row

    def dir_path(self, inode: int) -> bytes:
        """The absolute path of a directory inside the mount, e.g. ``b"/docs"``."""
        cached = self._dir_paths.get(inode)
        if cached is not None:
            return cached
        names = self.index.names_of(inode)
        if not names:
            raise NotFoundError(f"directory inode {inode} has no name")
        parent = self.dir_path(names[0].parent)
        path = (parent if parent != b"/" else b"") + b"/" + names[0].name
        self._dir_paths[inode] = path
        return path

    def child_path(self, parent: int, name: bytes) -> bytes:
        base = self.dir_path(parent)
        return (base if base != b"/" else b"") + b"/" + name

    def paths_of(self, inode: int) -> list[bytes]:
        """Every path naming ``inode`` (several for hard links, none if unlinked)."""
        if inode == ROOT_INODE:
            return [b"/"]
        return [self.child_path(d.parent, d.name) for d in self.index.names_of(inode)]

    def descendants(self, inode: int) -> Iterator[tuple[bytes, bool]]:
        """(path relative to the directory ``inode``, is a directory) below it."""
        pending: list[tuple[bytes, int]] = [(b"", inode)]
        while pending:
            prefix, directory = pending.pop()
            for entry in self.index.list_dentries(directory):
                row = self.index.get_inode(entry.inode)
                is_dir = row is not None and row.is_dir
                path = prefix + b"/" + entry.name
                yield path, is_dir
                if is_dir:
                    pending.append((path, entry.inode))

    def list_dir(self, inode: int, after: int) -> list[tuple[int, bytes, InodeRow]]:
        self.directory(inode)
        entries = []
        for entry in self.index.list_dentries(inode, after):
            row = self.index.get_inode(entry.inode)
            if row is not None:
                live = self.open_files.get(entry.inode)
                if live is not None:
                    row.size = live.size
                entries.append((entry.id, entry.name, row))
        return entries

    # Creating and removing names

    def create(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        *,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> InodeRow:
        """Create a file, directory, symlink or special file named ``name``."""
        check_name(name)
        self.directory(parent)
        if self.index.lookup(parent, name) is not None:
            raise FilesystemError(errno.EEXIST)
        is_dir = stat.S_ISDIR(mode)
        header = new_header().pack() if stat.S_ISREG(mode) else None
        with self.index.transaction():
            row = self.index.insert_inode(
                mode=mode,
                uid=uid,
                gid=gid,
                rdev=rdev,
                target=target,
                header=header,
                nlink=2 if is_dir else 1,
            )
            self.index.insert_dentry(parent, name, row.id)
            if is_dir:
                self.index.add_nlink(parent, 1)
            self._touch(parent)
        return row

    def link(self, inode: int, parent: int, name: bytes) -> InodeRow:
        check_name(name)
        row = self.inode(inode)
        if row.is_dir:
            raise FilesystemError(errno.EPERM, "hard links to directories")
        self.directory(parent)
        if self.index.lookup(parent, name) is not None:
            raise FilesystemError(errno.EEXIST)
        with self.index.transaction():
            self.index.insert_dentry(parent, name, inode)
            self.index.add_nlink(inode, 1)
            self.index.update_inode(inode, ctime_ns=time.time_ns())
            self._touch(parent)
        return self.inode(inode)

    def unlink(self, parent: int, name: bytes) -> None:
        row = self.lookup(parent, name)
        if row.is_dir:
            raise FilesystemError(errno.EISDIR)
        with self.index.transaction():
            self.index.delete_dentry(parent, name)
            self._drop_link(row)
            self._touch(parent)

    def rmdir(self, parent: int, name: bytes) -> None:
        row = self.lookup(parent, name)
        if not row.is_dir:
            raise FilesystemError(errno.ENOTDIR)
        if self.index.has_children(row.id):
            raise FilesystemError(errno.ENOTEMPTY)
        with self.index.transaction():
            self.index.delete_dentry(parent, name)
            self.index.add_nlink(parent, -1)
            self.index.delete_inode(row.id)
            self._touch(parent)
        self._dir_paths.pop(row.id, None)

    def _drop_link(self, row: InodeRow) -> None:
        self.index.add_nlink(row.id, -1)
        self.index.update_inode(row.id, ctime_ns=time.time_ns())
        if row.nlink <= 1 and row.id not in self.open_files:
            self._destroy(row.id)

    def _destroy(self, inode: int) -> None:
        """Delete an inode with no names and no handles, and its content.

        Streams are removed only after the index no longer points at them, so
        a crash in between leaves an unused stream (dropped at the next
        mount), never a file without content.
        """
        with self.index.transaction():
            versions = self.index.versions_of(inode)
            self.index.release_versions_of(inode)
            self.index.delete_inode(inode)
            released = [self._release_row(v) for v in versions]
        for cid in released:
            if cid is not None:
                self._forget_stream(cid)
        self._wake_pin_queue()

    def _release(self, version: VersionRow) -> None:
        """Let go of a version: unpin it later if a node holds it, else forget it."""
        cid = self._release_row(version)
        if cid is not None:
            self._forget_stream(cid)
        self._wake_pin_queue()

    def _release_row(self, version: VersionRow) -> str | None:
        """The index side of ``_release``; returns the CID whose stream may go."""
        if version.state == "unpin":
            return None
        if version.state in ("pinned", "pinning"):
            self.index.set_pin_state(version.id, "unpin")
        else:
            self.index.delete_version(version.id)
        return version.cid

    def _wake_pin_queue(self) -> None:
        if self.on_new_version is not None:
            self.on_new_version()

    def forget_version(self, version: VersionRow) -> None:
        """Delete a version's row, and its local stream unless another uses it."""
        self.index.delete_version(version.id)
        self._forget_stream(version.cid)

    def _forget_stream(self, cid: str) -> None:
        if not self.index.cid_in_use(cid):
            self.store.remove_stream(Cid(cid))
            self.index.set_local(cid, False)

    def _touch(self, inode: int) -> None:
        now = time.time_ns()
        self.index.update_inode(inode, mtime_ns=now, ctime_ns=now)

    # Rename

    def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
    ) -> None:
        """Move a name, honouring ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE``."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise FilesystemError(errno.EINVAL, "unsupported rename flags")
        check_name(new_name)
        source = self.lookup(old_parent, old_name)
        self.directory(new_parent)
        target_inode = self.index.lookup(new_parent, new_name)
        target = None if target_inode is None else self.inode(target_inode)
        if source.is_dir:
            self._refuse_cycle(source.id, new_parent)
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise FilesystemError(errno.ENOENT)
            if target.is_dir:
                self._refuse_cycle(target.id, old_parent)
            self._exchange(old_parent, old_name, source, new_parent, new_name, target)
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FilesystemError(errno.EEXIST)
            if target.id == source.id:
                return
            self._check_replace(source, target)
        with self.index.transaction():
            if target is not None:
                self.index.delete_dentry(new_parent, new_name)
                if target.is_dir:
                    self.index.add_nlink(new_parent, -1)
                    self.index.delete_inode(target.id)
                else:
                    self._drop_link(target)
            self.index.move_dentry(old_parent, old_name, new_parent, new_name)
            if source.is_dir and old_parent != new_parent:
                self.index.add_nlink(old_parent, -1)
                self.index.add_nlink(new_parent, 1)
            self.index.update_inode(source.id, ctime_ns=time.time_ns())
            self._touch(old_parent)
            self._touch(new_parent)
        if source.is_dir or (target is not None and target.is_dir):
            self._forget_dir_paths()

    def _check_replace(self, source: InodeRow, target: InodeRow) -> None:
        if source.is_dir and not target.is_dir:
            raise FilesystemError(errno.ENOTDIR)
        if target.is_dir and not source.is_dir:
            raise FilesystemError(errno.EISDIR)
        if target.is_dir and self.index.has_children(target.id):
            raise FilesystemError(errno.ENOTEMPTY)

    def _refuse_cycle(self, moved: int, new_parent: int) -> None:
        """A directory cannot move into itself or below itself."""
        current = new_parent
        while current != ROOT_INODE:
            if current == moved:
                raise FilesystemError(errno.EINVAL, "directory moved into itself")
            names = self.index.names_of(current)
            if not names:
                break
            current = names[0].parent

    def _exchange(
        self,
        old_parent: int,
        old_name: bytes,
        source: InodeRow,
        new_parent: int,
        new_name: bytes,
        target: InodeRow,
    ) -> None:
        with self.index.transaction():
            self.index.point_dentry(old_parent, old_name, target.id)
            self.index.point_dentry(new_parent, new_name, source.id)
            if old_parent != new_parent and source.is_dir != target.is_dir:
                delta = 1 if source.is_dir else -1
                self.index.add_nlink(new_parent, delta)
                self.index.add_nlink(old_parent, -delta)
            now = time.time_ns()
            self.index.update_inode(source.id, ctime_ns=now)
            self.index.update_inode(target.id, ctime_ns=now)
            self._touch(old_parent)
            self._touch(new_parent)
        self._forget_dir_paths()

    def _forget_dir_paths(self) -> None:
        self._dir_paths = {ROOT_INODE: b"/"}

    # Attributes

    def set_attributes(
        self,
        inode: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        row = self.inode(inode)
        atime_ns, mtime_ns = _clamp_time(atime_ns), _clamp_time(mtime_ns)
        columns: dict[str, object] = {"ctime_ns": time.time_ns()}
        if mode is not None:
            columns["mode"] = stat.S_IFMT(row.mode) | stat.S_IMODE(mode)
        if uid is not None:
            columns["uid"] = uid
        if gid is not None:
            columns["gid"] = gid
        if atime_ns is not None:
            columns["atime_ns"] = atime_ns
        if mtime_ns is not None:
            columns["mtime_ns"] = mtime_ns
            open_file = self.open_files.get(inode)
            if open_file is not None:
                open_file.mtime_ns = None
        self.index.update_inode(inode, **columns)

    # Extended attributes

    def get_xattr(self, inode: int, name: bytes) -> bytes | None:
        self.inode(inode)
        return self.index.get_xattr(inode, name)

    def set_xattr(self, inode: int, name: bytes, value: bytes, *, flags: int) -> None:
        self.inode(inode)
        exists = self.index.get_xattr(inode, name) is not None
        if flags & os.XATTR_CREATE and exists:
            raise FilesystemError(errno.EEXIST)
        if flags & os.XATTR_REPLACE and not exists:
            raise FilesystemError(errno.ENODATA)
        with self.index.transaction():
            self.index.set_xattr(inode, name, value)
            self.index.update_inode(inode, ctime_ns=time.time_ns())

    def current_version(self, inode: int) -> VersionRow | None:
        row = self.inode(inode)
        if not row.is_reg or row.version is None:
            return None
        return self.index.get_version(row.version)

    def list_xattrs(self, inode: int) -> list[bytes]:
        self.inode(inode)
        return self.index.list_xattrs(inode)

    def remove_xattr(self, inode: int, name: bytes) -> None:
        self.inode(inode)
        if not self.index.remove_xattr(inode, name):
            raise FilesystemError(errno.ENODATA)

    # Content

    def open_file(self, inode: int) -> OpenFile:
        """Return the shared state of a regular file and count one more handle."""
        open_file = self.open_files.get(inode)
        if open_file is None:
            row = self.inode(inode)
            if not row.is_reg:
                raise FilesystemError(errno.EINVAL, "not a regular file")
            assert row.header is not None
            cipher = FileCipher(self.key, Header.unpack(row.header))
            version = (
                None if row.version is None else self.index.get_version(row.version)
            )
            base = None if version is None else version.cid
            if base is not None:
                self._mark_used(base)
            open_file = OpenFile(self, inode, cipher, row.size, base)
            self.open_files[inode] = open_file
        open_file.handles += 1
        return open_file

    def _mark_used(self, cid: str) -> None:
        # Only eviction order depends on it: a full disk must not stop reads.
        try:
            self.index.mark_used(cid, time.time_ns())
        except StoreError as err:
            log.debug("not recording the use of %s: %s", cid, err)

    def check_space(self, needed: int) -> None:
        """Refuse a content write that would eat into the index's reserve.

        Raises:
            StoreFullError: the disk holding the staging area is (nearly) full.
        """
        disk = os.statvfs(self.paths.staging)
        total = disk.f_blocks * disk.f_frsize
        reserve = max(RESERVE_MIN_BYTES, min(RESERVE_MAX_BYTES, total // 50))
        if disk.f_bavail * disk.f_frsize - needed < reserve:
            raise StoreFullError(f"{self.paths.staging}: no space left for content")

    async def release_file(self, open_file: OpenFile) -> None:
        """Count one handle less; commit and close when it was the last."""
        open_file.handles -= 1
        if open_file.handles > 0:
            return
        row = self.index.get_inode(open_file.inode)
        if row is None or row.nlink <= 0:
            open_file.discard()
            del self.open_files[open_file.inode]
            if row is not None:
                self._destroy(row.id)
            return
        try:
            await self.commit(open_file, durable=False)
        except StoreError as err:
            if open_file.handles == 0:
                # The writer was told at close (flush); keeping what could not
                # be committed would only hold its staging space forever.
                log.warning(
                    "inode %d: dropping changes that could not be committed: %s",
                    open_file.inode,
                    err,
                )
                open_file.discard()
            raise
        finally:
            if open_file.handles == 0 and not open_file.changed:
                open_file.close()
                self.open_files.pop(open_file.inode, None)

    async def commit(self, open_file: OpenFile, *, durable: bool) -> None:
        """Commit an open file unless it is gone (unlinked files are not kept)."""
        row = self.index.get_inode(open_file.inode)
        if row is None or row.nlink <= 0:
            return
        await open_file.commit(durable=durable)

    async def truncate(self, inode: int, size: int) -> None:
        """Set the size of a file, opening it for the change if nobody has."""
        open_file = self.open_file(inode)
        try:
            await open_file.truncate(size)
        finally:
            await self.release_file(open_file)

    async def commit_all(self) -> None:
        """Commit every open file (unmount, SIGTERM)."""
        for open_file in list(self.open_files.values()):
            await self.commit(open_file, durable=True)

    def record_version(
        self,
        inode: int,
        dag: Dag,
        size: int,
        old_cid: str | None,
        *,
        durable: bool,
        uploading: bool = False,
    ) -> int:
        """Index a newly committed stream as the current version of ``inode``.

        With ``uploading``, its upload is under way already (``uploads``), so
        it is recorded as being pinned rather than queued. Returns its id.
        """
        open_file = self.open_files.get(inode)
        state = "local" if self.on_new_version is None else "queued"
        if uploading and state == "queued":
            state = "pinning"
        with self.index.transaction():
            version_id = self.index.insert_version(
                inode=inode,
                cid=str(dag.root),
                size=size,
                stored_size=dag.length,
                state=state,
            )
            if open_file is not None and open_file.mtime_ns is not None:
                self.index.update_inode(
                    inode, mtime_ns=open_file.mtime_ns, ctime_ns=open_file.mtime_ns
                )
                open_file.mtime_ns = None
        self.apply_retention(inode)
        if durable:
            self.index.sync()
        if self.on_new_version is not None:
            self.on_new_version()
        return version_id

    def apply_retention(self, inode: int) -> None:
        """Release superseded versions of ``inode`` that the policy does not keep."""
        now = time.time_ns()
        keep_ns = self.retention.keep_seconds * 1_000_000_000
        superseded = [
            v
            for v in self.index.versions_of(inode)
            if v.superseded_ns is not None and v.state != "unpin"
        ]
        superseded.sort(key=lambda v: v.id, reverse=True)
        alive = self.index.get_inode(inode) is not None
        for rank, version in enumerate(superseded):
            assert version.superseded_ns is not None
            young = now - version.superseded_ns < keep_ns
            if alive and (rank < self.retention.keep_versions or young):
                continue
            self._release(version)

    def maintain(self) -> None:
        """Retention for every file, then eviction down to the cache limit."""
        for inode in self.index.inodes_with_superseded():
            self.apply_retention(inode)
        self.evict()

    def evict(self) -> int:
        """Drop local copies of pinned streams, least recently used first."""
        limit = self.cache.max_bytes
        if limit <= 0 or self.remote is None:
            return 0
        used = self.index.local_bytes()
        evicted = 0
        skip = {f.base_cid for f in self.open_files.values()}
        for version in self.index.eviction_candidates():
            if used <= limit:
                break
            if version.cid in skip:
                continue
            skip.add(version.cid)
            self.store.remove_stream(Cid(version.cid))
            self.index.set_local(version.cid, False)
            used -= version.stored_size
            evicted += 1
        if evicted:
            log.info("evicted %d pinned streams from the local cache", evicted)
        return evicted

    async def restore_stream(self, cid: str) -> None:
        """Bring an evicted stream back into the embedded store.

        Raises:
            StoreError: no node is configured to fetch it from.
            RemoteError, IntegrityError: the node failed or sent wrong bytes.
        """
        if self.remote is None:
            raise StoreError(f"stream {cid} is not stored locally")
        target = self.paths.staging / f"restore.{next(self._staging_names)}"
        try:
            await self.remote.download(Cid(cid), target)
            await trio.to_thread.run_sync(
                lambda: self.store.add_stream(target, durable=False)
            )
        finally:
            target.unlink(missing_ok=True)
        self.index.set_local(cid, True)

    def new_staging_path(self, inode: int) -> Path:
        return self.paths.staging / f"{inode}.{next(self._staging_names)}"

    def report_integrity_failure(
        self, inode: int, cid: str | None, segment: int, *, from_node: bool = False
    ) -> None:
        """Log one ERROR line per damaged segment, however often it is read.

        ``from_node``: the segment came from the node in a block that did not
        match its CID, so the node or the way to it is at fault, not the disk.
        """
        if (cid, segment) in self._reported:
            return
        self._reported.add((cid, segment))
        what = (
            "came from the node in a block that does not match its CID"
            if from_node
            else "failed authentication"
        )
        log.error(
            "integrity failure: stream %s of inode %d, segment %d %s; "
            "reads of that range give EIO",
            cid,
            inode,
            segment,
            what,
        )

    # Whole-vault facts

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.paths.store)
