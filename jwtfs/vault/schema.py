"""The index's SQLite schema and the rows read from it.

Schema, table by table:

``meta``
    key, value: vault-wide facts (``schema``: the schema version, ``vault_id``,
    ``key_fingerprint``: which master key the vault's files are encrypted with,
    ``snapshot_cid``/``snapshot_ns``: the last index snapshot pinned, and when,
    ``node_state``/``node_since``: whether the pin target last answered, since
    when, ``last_inode``: the highest inode number ever given out, so none
    is given out twice).

``inodes`` (one row per file, directory, symlink or special file)
    id        the inode number the kernel sees; 1 is the mount root.
    mode      ``st_mode`` with the file type bits.
    uid, gid  owner and group.
    size      plaintext bytes of the current version (files), target length
              (symlinks), 0 otherwise.
    atime_ns, mtime_ns, ctime_ns   timestamps in nanoseconds since the epoch.
    rdev      device number of device nodes, else 0.
    nlink     names pointing here; directories count 2 plus their subdirectories.
    target    symlink target bytes, else NULL.
    header    the 32-byte ciphertext stream header of this file. It carries the
              random file id the per-file key is derived from; every version of
              the file shares it, so unchanged segments survive a rewrite.
    version   id of the current ``versions`` row, NULL while the file is empty
              and has never been committed.

``dentries`` (one row per name)
    id        a stable position for ``readdir`` offsets.
    parent    inode of the directory holding the name.
    name      the name, raw bytes (anything but ``/`` and NUL, at most 255).
    inode     the inode the name points to.

``versions`` (every committed content of a file)
    id, inode     the version and the file it belongs to.
    cid           CIDv1 of the ciphertext stream, as Kubo's raw-leaves ``add``
                  computes it.
    size          plaintext bytes; stored_size: ciphertext stream bytes.
    created_ns    when it was committed; superseded_ns: when a newer version
                  replaced it (NULL for the current one).
    state         where the stream is: ``local`` (embedded store only, no
                  node configured), ``queued`` (waiting for the pin queue),
                  ``pinning`` (being pushed), ``pinned`` (the node holds and
                  pins it), ``failed`` (pushes keep failing or the node
                  named another CID; ``reason`` says why).
    reason        why the last push failed, else NULL.
    attempts      pushes tried so far; next_try_ns: not before this time
                  (``NEVER_NS`` for a failed version that only ``jwtfs flush``
                  retries).
    local         1 while the stream is in the embedded store, 0 once evicted.
    used_ns       when the stream was last opened, for eviction by age.

``xattrs``
    inode, name, value: extended attributes, raw bytes.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

SCHEMA_VERSION = 1
ROOT_INODE = 1
# ``next_try_ns`` of a version that is retried only when asked to.
NEVER_NS = 2**63 - 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE inodes (
    id INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    nlink INTEGER NOT NULL,
    target BLOB,
    header BLOB,
    version INTEGER
);
CREATE TABLE dentries (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    inode INTEGER NOT NULL,
    UNIQUE (parent, name)
);
CREATE INDEX dentries_inode ON dentries (inode);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    inode INTEGER NOT NULL,
    cid TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    superseded_ns INTEGER,
    state TEXT NOT NULL DEFAULT 'local',
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_ns INTEGER NOT NULL DEFAULT 0,
    local INTEGER NOT NULL DEFAULT 1,
    used_ns INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX versions_state ON versions (state);
CREATE INDEX versions_inode ON versions (inode);
CREATE INDEX versions_cid ON versions (cid);
CREATE TABLE xattrs (
    inode INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (inode, name)
);
"""

# Column lists and SET clauses below are built from these names in code, never
# from input, so the f-string queries (ruff S608) carry no injection risk.
INODE_COLUMNS = (
    "id, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, rdev, nlink, target, "
    "header, version"
)


@dataclass
class InodeRow:
    """One row of ``inodes``."""

    id: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    nlink: int
    target: bytes | None
    header: bytes | None
    version: int | None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(frozen=True)
class VersionRow:
    """One row of ``versions``."""

    id: int
    inode: int
    cid: str
    size: int
    stored_size: int
    created_ns: int
    superseded_ns: int | None
    state: str
    reason: str | None
    attempts: int
    next_try_ns: int
    local: bool
    used_ns: int


VERSION_COLUMNS = (
    "id, inode, cid, size, stored_size, created_ns, superseded_ns, state, reason, "
    "attempts, next_try_ns, local, used_ns"
)


@dataclass(frozen=True)
class Dentry:
    """One row of ``dentries``."""

    id: int
    parent: int
    name: bytes
    inode: int
