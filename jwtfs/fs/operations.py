"""The FUSE request handlers: inodes, handles, and the token gate before each access.

Access rules (DESIGN.md, "Access"), as applied here:

* content, ``readlink`` and xattrs need ``read`` on the path; every change
  needs ``write``; renames and hard links need ``write`` at both ends;
* ``lookup`` and ``getattr`` of a file need ``read`` or ``write``; of a
  directory, any grant on it or below it; a directory lists only the entries
  the token reaches;
* an out-of-scope name is ``EACCES`` whether or not it exists;
* without a valid token, only the mount root's own attributes are served.

An open handle keeps the path it was opened by, moved along by renames, and
every read and write checks that path again, so an expired or revoked token
stops an open handle too. When the grants change, the kernel's cached entries,
attributes and pages are invalidated, so nothing cached outlives a token.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from jwtfs.auth.scope import Grants
from jwtfs.auth.sources import TokenSource
from jwtfs.errors import FilesystemError
from jwtfs.fs.errors import guarded
from jwtfs.vault.files import OpenFile
from jwtfs.vault.schema import ROOT_INODE, InodeRow
from jwtfs.vault.vault import Vault

log = logging.getLogger(__name__)

# Seconds the kernel may cache entries and attributes. Token changes
# invalidate them explicitly; this bounds what a missed invalidation can cost.
CACHE_TIMEOUT = 1.0
# How often the token file is looked at for changes.
TOKEN_POLL_SECONDS = 0.25
BLOCK_SIZE = 4096
IO_SIZE = 128 * 1024

READ, WRITE = "read", "write"

# Read-only attributes every stored file shows, so getfattr and file managers
# can tell where its content is: the current CID and its pin state.
CID_XATTR = b"user.jwtfs.cid"
PIN_XATTR = b"user.jwtfs.pin"
VIRTUAL_XATTRS = (CID_XATTR, PIN_XATTR)
# Kept for attributes jwtfs answers itself, now and later: none can be set.
RESERVED_XATTRS = b"user.jwtfs"


@dataclass
class Handle:
    """One open file description."""

    open_file: OpenFile
    path: bytes
    append: bool
    writable: bool


@dataclass
class DirHandle:
    inode: int


def _entry(row: InodeRow) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = pyfuse3.InodeT(row.id)
    entry.generation = 0
    entry.entry_timeout = CACHE_TIMEOUT
    entry.attr_timeout = CACHE_TIMEOUT
    entry.st_mode = row.mode
    entry.st_nlink = max(row.nlink, 0)
    entry.st_uid = row.uid
    entry.st_gid = row.gid
    entry.st_rdev = row.rdev
    entry.st_size = row.size
    entry.st_blksize = IO_SIZE
    entry.st_blocks = -(-row.size // 512)
    entry.st_atime_ns = row.atime_ns
    entry.st_mtime_ns = row.mtime_ns
    entry.st_ctime_ns = row.ctime_ns
    return entry


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers for one mounted vault.

    Every request handler, here and in any subclass, is wrapped by
    ``guarded`` when the class is made: an exception that escaped a handler
    would end pyfuse3's main loop and take the mount down.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _guard_handlers(cls)

    def __init__(
        self, vault: Vault, tokens: TokenSource, *, owner_uid: int | None = None
    ) -> None:
        super().__init__()
        self.vault = vault
        self.tokens = tokens
        # The tokens are the mounting user's. With allow_other the kernel lets
        # other users' requests through, and they get only the root's
        # attributes and statfs; without it the kernel refuses them itself.
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self._handles: dict[int, Handle] = {}
        self._dir_handles: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._lookups: dict[int, int] = {}
        self._entries: dict[int, set[tuple[int, bytes]]] = {}
        # Set while nothing the kernel caches predates the current grants;
        # replaced by an unset one from a change of grants until the kernel
        # has dropped its entries and pages.
        self._caches_clean = trio.Event()
        self._caches_clean.set()

    # The gate

    def _grants(self) -> Grants:
        return self.tokens.grants()

    def _refuse(self, path: bytes, action: str) -> pyfuse3.FUSEError:
        self.tokens.deny(path, action)
        return pyfuse3.FUSEError(errno.EACCES)

    def _require(self, action: str, path: bytes) -> None:
        grants = self._grants()
        allowed = grants.can_write(path) if action == WRITE else grants.can_read(path)
        if not allowed:
            raise self._refuse(path, action)

    def _visible(self, grants: Grants, path: bytes, row: InodeRow) -> bool:
        return grants.reaches(path, row.is_dir)

    def _paths_for(self, inode: int) -> list[bytes]:
        """Paths that name ``inode``; an unlinked open file keeps its handle paths."""
        paths = self.vault.paths_of(inode)
        if not paths:
            paths = [
                h.path for h in self._handles.values() if h.open_file.inode == inode
            ]
        return paths

    def _inode_path(self, inode: int, action: str) -> bytes:
        """A path of ``inode`` that allows ``action``, or EACCES."""
        grants = self._grants()
        check = grants.can_write if action == WRITE else grants.can_read
        paths = self._paths_for(inode)
        for path in paths:
            if check(path):
                return path
        raise self._refuse(paths[0] if paths else b"?", action)

    def _remember_entry(self, parent: int, name: bytes, inode: int) -> None:
        self._lookups[inode] = self._lookups.get(inode, 0) + 1
        self._entries.setdefault(inode, set()).add((parent, name))

    def _reply(
        self, parent: int, name: bytes, row: InodeRow
    ) -> pyfuse3.EntryAttributes:
        self._remember_entry(parent, name, row.id)
        return _entry(row)

    # Lookups and attributes

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self.vault.child_path(parent_inode, name)
        grants = self._grants()
        as_file = grants.can_read(path) or grants.can_write(path)
        if not (as_file or grants.can_list(path)):
            raise self._refuse(path, "lookup")
        try:
            row = self.vault.lookup(parent_inode, name)
        except FilesystemError as err:
            # A name the token reaches only as a way to something below it:
            # whether it is missing or a file must look the same.
            if err.errno == errno.ENOENT and not as_file:
                raise self._refuse(path, "lookup") from None
            raise
        if not (as_file or row.is_dir):
            raise self._refuse(path, "lookup")
        return self._reply(parent_inode, name, row)

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        row = self.vault.inode(inode)
        if inode != ROOT_INODE:
            self._require_visible(row)
        return _entry(row)

    def _require_visible(self, row: InodeRow) -> None:
        grants = self._grants()
        paths = self._paths_for(row.id)
        if not any(self._visible(grants, p, row) for p in paths):
            raise self._refuse(paths[0] if paths else b"?", "stat")

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        handle = self._handles.get(fh) if fh is not None else None
        if handle is not None:
            self._require(WRITE, handle.path)
        else:
            self._inode_path(inode, WRITE)
        if fields.update_size:
            if handle is not None:
                await handle.open_file.truncate(attr.st_size)
            else:
                await self.vault.truncate(inode, attr.st_size)
        self.vault.set_attributes(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return _entry(self.vault.inode(inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        self._inode_path(inode, READ)
        row = self.vault.inode(inode)
        if row.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return row.target

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        disk = self.vault.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = IO_SIZE
        data.f_frsize = disk.f_frsize
        data.f_blocks = disk.f_blocks
        data.f_bfree = disk.f_bfree
        data.f_bavail = disk.f_bavail
        data.f_files = disk.f_files
        data.f_ffree = disk.f_ffree
        data.f_favail = disk.f_favail
        data.f_namemax = 255
        return data

    # Creating and removing names

    def _new_mode(self, mode: int, ctx: pyfuse3.RequestContext) -> int:
        return stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~ctx.umask)

    def _create_node(
        self,
        parent: int,
        name: bytes,
        mode: int,
        ctx: pyfuse3.RequestContext,
        *,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> InodeRow:
        self._require(WRITE, self.vault.child_path(parent, name))
        return self.vault.create(
            parent, name, mode, ctx.uid, ctx.gid, rdev=rdev, target=target
        )

    async def mknod(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        row = self._create_node(
            parent_inode, name, self._new_mode(mode, ctx), ctx, rdev=rdev
        )
        return self._reply(parent_inode, name, row)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        mode = stat.S_IFDIR | stat.S_IMODE(self._new_mode(mode, ctx))
        row = self._create_node(parent_inode, name, mode, ctx)
        return self._reply(parent_inode, name, row)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        row = self._create_node(
            parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target
        )
        return self._reply(parent_inode, name, row)

    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        mode = stat.S_IFREG | stat.S_IMODE(self._new_mode(mode, ctx))
        row = self._create_node(parent_inode, name, mode, ctx)
        path = self.vault.child_path(parent_inode, name)
        info = self._open_handle(row.id, path, flags)
        self._handles[info.fh].open_file.changed = True
        return info, self._reply(parent_inode, name, row)

    async def unlink(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._require(WRITE, self.vault.child_path(parent_inode, name))
        self.vault.unlink(parent_inode, name)

    async def rmdir(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._require(WRITE, self.vault.child_path(parent_inode, name))
        self.vault.rmdir(parent_inode, name)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old = self.vault.child_path(parent_inode_old, name_old)
        new = self.vault.child_path(parent_inode_new, name_new)
        self._require(WRITE, old)
        self._require(WRITE, new)
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        self._require_no_new_reach(parent_inode_old, name_old, old, new)
        if exchange:
            self._require_no_new_reach(parent_inode_new, name_new, new, old)
        self.vault.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        self._move_handle_paths(
            old, new, exchange=bool(flags & pyfuse3.RENAME_EXCHANGE)
        )

    def _require_no_new_reach(
        self, parent: int, name: bytes, old: bytes, new: bytes
    ) -> None:
        """Moving a directory must not make anything below it readable or visible
        at its new place that the token could not read or see at the old one."""
        inode = self.vault.index.lookup(parent, name)
        row = None if inode is None else self.vault.index.get_inode(inode)
        if row is None or not row.is_dir:
            return
        grants = self._grants()
        for relative, is_dir in self.vault.descendants(row.id):
            before, after = old + relative, new + relative
            gains_read = grants.can_read(after) and not grants.can_read(before)
            gains_sight = grants.reaches(after, is_dir) and not grants.reaches(
                before, is_dir
            )
            if gains_read or gains_sight:
                raise self._refuse(before, "move into reach")

    def _move_handle_paths(self, old: bytes, new: bytes, *, exchange: bool) -> None:
        def moved(path: bytes, src: bytes, dst: bytes) -> bytes | None:
            if path == src:
                return dst
            if path.startswith(src + b"/"):
                return dst + path[len(src) :]
            return None

        for handle in self._handles.values():
            target = moved(handle.path, old, new)
            if target is None and exchange:
                target = moved(handle.path, new, old)
            if target is not None:
                handle.path = target

    async def link(
        self,
        inode: int,
        new_parent_inode: int,
        new_name: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._inode_path(inode, WRITE)
        self._require(WRITE, self.vault.child_path(new_parent_inode, new_name))
        row = self.vault.link(inode, new_parent_inode, new_name)
        return self._reply(new_parent_inode, new_name, row)

    # Files

    def _open_handle(self, inode: int, path: bytes, flags: int) -> pyfuse3.FileInfo:
        open_file = self.vault.open_file(inode)
        accmode = flags & os.O_ACCMODE
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(
            open_file=open_file,
            path=path,
            append=bool(flags & os.O_APPEND),
            writable=accmode != os.O_RDONLY,
        )
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    async def open(
        self, inode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        accmode = flags & os.O_ACCMODE
        writing = accmode != os.O_RDONLY or bool(flags & os.O_TRUNC)
        try:
            path = self._inode_path(inode, WRITE if writing else READ)
        except pyfuse3.FUSEError:
            # Refused just after the grants changed: answer once the kernel
            # has dropped the pages the old grants let in, so that no handle
            # opened before still reads them after a new open was refused.
            # The kernel holds no lock for an open that the dropping needs.
            with trio.move_on_after(CACHE_TIMEOUT):
                await self._caches_clean.wait()
            raise
        row = self.vault.inode(inode)
        if row.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        info = self._open_handle(inode, path, flags)
        if flags & os.O_TRUNC:
            await self._handles[info.fh].open_file.truncate(0)
        return info

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handle(fh)
        self._require(READ, handle.path)
        return await handle.open_file.read(off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        self._require(WRITE, handle.path)
        open_file = handle.open_file
        if handle.append:
            off = open_file.size
        return await open_file.write(off, buf)

    async def flush(self, fh: int) -> None:
        # Sent at every close of a descriptor, also a reader's while another
        # process writes: only a handle that could write commits, so a reader
        # does not cut a file being written into versions.
        # A new file still empty waits for its release: a shell's ``> f``
        # closes a duplicate of the descriptor before writing, and committing
        # there would pin an empty version of every file it creates.
        handle = self._handle(fh)
        if handle.writable and not handle.open_file.empty_and_new:
            await self.vault.commit(handle.open_file, durable=False)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vault.commit(self._handle(fh).open_file, durable=True)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            await self.vault.release_file(handle.open_file)

    # Directories

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        row = self.vault.directory(inode)
        self._require_listable(row.id)
        fh = self._next_fh
        self._next_fh += 1
        self._dir_handles[fh] = DirHandle(inode)
        return fh

    def _require_listable(self, inode: int) -> bytes:
        path = self.vault.dir_path(inode)
        if not self._grants().can_list(path):
            raise self._refuse(path, "list")
        return path

    async def readdir(
        self, fh: int, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        handle = self._dir_handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        base = self._require_listable(handle.inode)
        prefix = base if base != b"/" else b""
        grants = self._grants()
        for entry_id, name, row in self.vault.list_dir(handle.inode, start_id):
            if not self._visible(grants, prefix + b"/" + name, row):
                continue
            if not pyfuse3.readdir_reply(token, name, _entry(row), entry_id):
                return
            self._remember_entry(handle.inode, name, row.id)

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.vault.index.sync()

    # Extended attributes

    async def getxattr(
        self, inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> bytes:
        if name == b"security.capability":
            # Asked before every write; answered without a lookup.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        self._inode_path(inode, READ)
        value = self._virtual_xattr(inode, name) if name in VIRTUAL_XATTRS else None
        if value is None:
            value = self.vault.get_xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    def _virtual_xattr(self, inode: int, name: bytes) -> bytes | None:
        version = self.vault.current_version(inode)
        if version is None:
            return None
        return (version.cid if name == CID_XATTR else version.state).encode()

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self._inode_path(inode, READ)
        # The virtual attributes are left out, so cp -a, rsync -X and tar do
        # not copy one file's CID onto another; getfattr -n still reads them.
        return self.vault.list_xattrs(inode)

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._inode_path(inode, WRITE)
        if name == RESERVED_XATTRS or name.startswith(RESERVED_XATTRS + b"."):
            raise pyfuse3.FUSEError(errno.EPERM)
        if name.startswith(b"system.posix_acl_"):
            # No ACLs: EOPNOTSUPP makes cp -a and rsync fall back to chmod,
            # where storing the ACL as a plain xattr would lose the mode bits.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self.vault.set_xattr(inode, name, value, flags=0)

    async def removexattr(
        self, inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._inode_path(inode, WRITE)
        if name in VIRTUAL_XATTRS:
            raise pyfuse3.FUSEError(errno.EPERM)
        self.vault.remove_xattr(inode, name)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if inode == ROOT_INODE and mode == os.F_OK:
            return True
        try:
            self._inode_path(inode, WRITE if mode & os.W_OK else READ)
        except pyfuse3.FUSEError:
            return False
        return True

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, nlookup in inode_list:
            left = self._lookups.get(inode, 0) - nlookup
            if left > 0:
                self._lookups[inode] = left
            else:
                self._lookups.pop(inode, None)
                self._entries.pop(inode, None)

    # Token changes

    async def watch_tokens(self) -> None:
        """Re-read tokens when they change or expire; drop what the kernel cached."""
        while True:
            deadline = self.tokens.next_deadline()
            delay = TOKEN_POLL_SECONDS
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.time()))
            await trio.sleep(delay)
            self._caches_clean = trio.Event()
            try:
                try:
                    changed = self.tokens.refresh()
                except Exception:
                    log.exception("re-reading tokens failed; keeping the grants")
                    continue
                if changed:
                    log.info("tokens changed; dropping cached entries and pages")
                    await self.invalidate_kernel_caches()
            finally:
                self._caches_clean.set()

    async def invalidate_kernel_caches(self) -> None:
        entries = [(p, n) for names in self._entries.values() for (p, n) in names]
        inodes = list(self._lookups) + [ROOT_INODE]

        def invalidate() -> None:
            for inode in inodes:
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_inode(inode, attr_only=False)
            for parent, name in entries:
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_entry(parent, name)

        await trio.to_thread.run_sync(invalidate)

    def open_handle_count(self) -> int:
        return len(self._handles)


# Every handler pyfuse3 may call; ``forget`` too, which has no reply to fail.
HANDLERS = [
    "access",
    "create",
    "flush",
    "forget",
    "fsync",
    "fsyncdir",
    "getattr",
    "getxattr",
    "link",
    "listxattr",
    "lookup",
    "mkdir",
    "mknod",
    "open",
    "opendir",
    "read",
    "readdir",
    "readlink",
    "release",
    "releasedir",
    "removexattr",
    "rename",
    "rmdir",
    "setattr",
    "setxattr",
    "statfs",
    "symlink",
    "unlink",
    "write",
]


# What another user may still ask of an allow_other mount.
_OPEN_TO_OTHERS = frozenset({"statfs", "forget", "release", "releasedir", "flush"})


def _owner_only(name: str, handler: Callable[..., Awaitable[Any]]) -> Any:
    """Refuse requests of users other than the mounting one (allow_other)."""

    @functools.wraps(handler)
    async def wrapper(self: Operations, *args: Any) -> Any:
        ctx = next((a for a in args if isinstance(a, pyfuse3.RequestContext)), None)
        if ctx is not None and ctx.uid != self.owner_uid:
            root_attrs = name == "getattr" and args[0] == ROOT_INODE
            if not root_attrs and name not in _OPEN_TO_OTHERS:
                log.info(
                    "access denied: %s by uid %d (not the mount's owner)", name, ctx.uid
                )
                raise pyfuse3.FUSEError(errno.EACCES)
        return await handler(self, *args)

    return wrapper


def _guard_handlers(cls: type) -> None:
    for name in HANDLERS:
        handler = cls.__dict__.get(name)
        if handler is not None and not getattr(handler, "__guarded__", False):
            setattr(cls, name, guarded(_owner_only(name, handler)))


_guard_handlers(Operations)
