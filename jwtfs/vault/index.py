"""The SQLite index: the directory tree, attributes and the versions of each file.

The only module that touches ``sqlite3``. The database runs in WAL mode so the
CLI (``jwtfs index``, ``jwtfs status``) can read while a mount writes, with
``synchronous=NORMAL``: a commit survives a crash of the daemon at once and a
power loss after the next checkpoint, which ``sync()`` forces for fsync.

The schema, table by table and column by column, is described in
``jwtfs.vault.schema``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jwtfs.errors import StoreError, StoreFullError
from jwtfs.vault.schema import (
    INODE_COLUMNS,
    ROOT_INODE,
    SCHEMA,
    SCHEMA_VERSION,
    VERSION_COLUMNS,
    Dentry,
    InodeRow,
    VersionRow,
)


def _translate(err: sqlite3.Error) -> StoreError:
    text = str(err)
    if isinstance(err, sqlite3.OperationalError) and "full" in text:
        return StoreFullError(f"index: {text}")
    return StoreError(f"index: {text}")


class Index:
    """The vault's SQLite database. Methods are synchronous and short.

    Writes happen inside ``transaction()``; a method that changes rows and is
    called outside one commits on its own.
    """

    def __init__(
        self, path: Path, *, readonly: bool = False, untouched: bool = False
    ) -> None:
        """Open the index; ``untouched`` reads it without creating SQLite's
        ``-wal`` and ``-shm`` files, for checks that must change nothing (it
        may miss what a running daemon has not checkpointed yet)."""
        try:
            if untouched:
                uri = f"file:{path}?mode=ro&immutable=1"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
            elif readonly:
                uri = f"file:{path}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
            else:
                self._db = sqlite3.connect(path, isolation_level=None)
                path.chmod(0o600)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as err:
            raise _translate(err) from err
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes; nested use joins the outer transaction.

        Raises:
            StoreError: the database could not be written (StoreFullError when
                the disk is full); the transaction is rolled back.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise _translate(err) from err
        self._depth = 1
        try:
            yield
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise _translate(err) from err
        except BaseException:
            self._rollback()
            raise
        finally:
            self._depth = 0

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as err:
            raise _translate(err) from err

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        """Run a query and read every row, translating errors met while reading."""
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as err:
            raise _translate(err) from err

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> Any:
        """Run a query and read its first row (None when there is none)."""
        try:
            return self._db.execute(sql, args).fetchone()
        except sqlite3.Error as err:
            raise _translate(err) from err

    def _write(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        with self.transaction():
            return self._run(sql, args)

    # Set-up and maintenance

    def create_schema(
        self, *, uid: int, gid: int, vault_id: str, key_fingerprint: str
    ) -> None:
        """Create the tables and the root directory of a new vault.

        Raises:
            StoreError: the database could not be written.
        """
        now = time.time_ns()
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._run(statement)
            self._run("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self._run("INSERT INTO meta VALUES ('vault_id', ?)", (vault_id,))
            self._run(
                "INSERT INTO meta VALUES ('key_fingerprint', ?)", (key_fingerprint,)
            )
            self._run(
                f"INSERT INTO inodes ({INODE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, 0, ?, ?, ?, 0, 2, NULL, NULL, NULL)",
                (ROOT_INODE, stat.S_IFDIR | 0o755, uid, gid, now, now, now),
            )

    def has_schema(self) -> bool:
        row = self._one(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        )
        return row is not None

    def meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key=?", (key,))
        return None if row is None else str(row[0])

    def integrity_check(self) -> str:
        """Return SQLite's ``integrity_check`` verdict (``ok`` when sound)."""
        return str(self._one("PRAGMA integrity_check")[0])

    def total_changes(self) -> int:
        """Rows changed through this connection since it was opened."""
        return self._db.total_changes

    def copy_to(self, path: Path) -> None:
        """Write a consistent copy of the database to ``path`` (a new file).

        Raises:
            StoreError: the copy could not be written.
        """
        self._run("VACUUM INTO ?", (str(path),))
        path.chmod(0o600)

    def mark_recovered(self) -> int:
        """After a restore from a snapshot: nothing is local, only pins count.

        Returns the number of current versions that can be fetched.
        """
        with self.transaction():
            self._run("UPDATE versions SET local=0")
            self._run("UPDATE versions SET state='pinned' WHERE state='pinning'")
            self._run(
                "UPDATE versions SET state='failed', "
                "reason='not yet pinned when the snapshot was taken' "
                "WHERE state IN ('local', 'queued')"
            )
            self._run("DELETE FROM meta WHERE key IN ('node_state', 'node_since')")
        row = self._one(
            "SELECT count(*) FROM versions "
            "WHERE state='pinned' AND superseded_ns IS NULL"
        )
        return int(row[0])

    def sync(self) -> None:
        """Make every committed transaction durable against power loss.

        Raises:
            StoreError: the checkpoint failed.
        """
        self._run("PRAGMA wal_checkpoint(FULL)")

    # Inodes

    def get_inode(self, inode: int) -> InodeRow | None:
        row = self._one(f"SELECT {INODE_COLUMNS} FROM inodes WHERE id=?", (inode,))
        return None if row is None else InodeRow(*row)

    def insert_inode(
        self,
        *,
        mode: int,
        uid: int,
        gid: int,
        rdev: int = 0,
        target: bytes | None = None,
        header: bytes | None = None,
        nlink: int = 1,
    ) -> InodeRow:
        """Insert an inode under a number never used before in this vault: the
        kernel may still hold a deleted inode (a removed directory that is a
        process's working directory), and would take a new one with its
        number for the old."""
        now = time.time_ns()
        size = len(target) if target is not None else 0
        last = self.meta("last_inode")
        if last is None:  # a vault made before the number was kept
            last = self._one("SELECT coalesce(max(id), 0) FROM inodes")[0]
        inode = int(last) + 1
        self._write(
            f"INSERT INTO inodes ({INODE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (inode, mode, uid, gid, size, now, now, now, rdev, nlink, target, header),
        )
        self.set_meta("last_inode", str(inode))
        row = self.get_inode(inode)
        assert row is not None
        return row

    def update_inode(self, inode: int, **columns: object) -> None:
        """Set the named columns of one inode row."""
        if not columns:
            return
        names = ", ".join(f"{name}=?" for name in columns)
        self._write(f"UPDATE inodes SET {names} WHERE id=?", (*columns.values(), inode))

    def add_nlink(self, inode: int, delta: int) -> None:
        self._write("UPDATE inodes SET nlink = nlink + ? WHERE id=?", (delta, inode))

    def delete_inode(self, inode: int) -> None:
        with self.transaction():
            self._run("DELETE FROM xattrs WHERE inode=?", (inode,))
            self._run("DELETE FROM inodes WHERE id=?", (inode,))

    def orphan_inodes(self) -> list[int]:
        """Inodes no name points to any more (left behind by a crash)."""
        rows = self._all(
            "SELECT id FROM inodes WHERE nlink <= 0 AND id != ?", (ROOT_INODE,)
        )
        return [r[0] for r in rows]

    def count_inodes(self) -> int:
        return int(self._one("SELECT count(*) FROM inodes")[0])

    # Directory entries

    def lookup(self, parent: int, name: bytes) -> int | None:
        row = self._one(
            "SELECT inode FROM dentries WHERE parent=? AND name=?", (parent, name)
        )
        return None if row is None else int(row[0])

    def insert_dentry(self, parent: int, name: bytes, inode: int) -> None:
        self._write(
            "INSERT INTO dentries (parent, name, inode) VALUES (?, ?, ?)",
            (parent, name, inode),
        )

    def delete_dentry(self, parent: int, name: bytes) -> None:
        self._write("DELETE FROM dentries WHERE parent=? AND name=?", (parent, name))

    def move_dentry(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes
    ) -> None:
        self._write(
            "UPDATE dentries SET parent=?, name=? WHERE parent=? AND name=?",
            (new_parent, new_name, parent, name),
        )

    def point_dentry(self, parent: int, name: bytes, inode: int) -> None:
        self._write(
            "UPDATE dentries SET inode=? WHERE parent=? AND name=?",
            (inode, parent, name),
        )

    def list_dentries(self, parent: int, after: int = 0) -> list[Dentry]:
        rows = self._all(
            "SELECT id, parent, name, inode FROM dentries "
            "WHERE parent=? AND id > ? ORDER BY id",
            (parent, after),
        )
        return [Dentry(*r) for r in rows]

    def has_children(self, parent: int) -> bool:
        row = self._one("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (parent,))
        return row is not None

    def names_of(self, inode: int) -> list[Dentry]:
        rows = self._all(
            "SELECT id, parent, name, inode FROM dentries WHERE inode=? ORDER BY id",
            (inode,),
        )
        return [Dentry(*r) for r in rows]

    def resolve(self, path: bytes) -> int | None:
        """The inode at an absolute path inside the vault, or None."""
        inode: int | None = ROOT_INODE
        for name in path.split(b"/"):
            if name and inode is not None:
                inode = self.lookup(inode, name)
        return inode

    def pending_pins(self) -> tuple[int, int]:
        """Versions of any age still queued or being pushed, and their bytes."""
        row = self._one(
            "SELECT count(*), coalesce(sum(stored_size), 0) FROM versions "
            "WHERE state IN ('queued', 'pinning')"
        )
        return int(row[0]), int(row[1])

    def walk(self) -> Iterator[tuple[bytes, int]]:
        """Yield (path, inode) of every name, parents before children."""
        pending: list[tuple[bytes, int]] = [(b"", ROOT_INODE)]
        while pending:
            prefix, parent = pending.pop()
            for entry in self.list_dentries(parent):
                path = prefix + b"/" + entry.name
                yield path, entry.inode
                row = self.get_inode(entry.inode)
                if row is not None and row.is_dir:
                    pending.append((path, entry.inode))

    # Versions

    def insert_version(
        self, *, inode: int, cid: str, size: int, stored_size: int, state: str
    ) -> int:
        """Record a new current version of ``inode`` and supersede the old one.

        Returns the id of the new version. Raises StoreError on failure.
        """
        now = time.time_ns()
        with self.transaction():
            self._run(
                "UPDATE versions SET superseded_ns=? "
                "WHERE inode=? AND superseded_ns IS NULL",
                (now, inode),
            )
            cursor = self._run(
                "INSERT INTO versions (inode, cid, size, stored_size, created_ns, "
                "state) VALUES (?, ?, ?, ?, ?, ?)",
                (inode, cid, size, stored_size, now, state),
            )
            version = cursor.lastrowid
            self._run(
                "UPDATE inodes SET version=?, size=? WHERE id=?",
                (version, size, inode),
            )
        assert version is not None
        return version

    def get_version(self, version: int) -> VersionRow | None:
        row = self._one(
            f"SELECT {VERSION_COLUMNS} FROM versions WHERE id=?",
            (version,),
        )
        return None if row is None else VersionRow(*row)

    def versions_of(self, inode: int) -> list[VersionRow]:
        rows = self._all(
            f"SELECT {VERSION_COLUMNS} FROM versions WHERE inode=? ORDER BY id",
            (inode,),
        )
        return [VersionRow(*r) for r in rows]

    def superseded_versions(self) -> list[VersionRow]:
        rows = self._all(
            f"SELECT {VERSION_COLUMNS} FROM versions "
            "WHERE superseded_ns IS NOT NULL ORDER BY id"
        )
        return [VersionRow(*r) for r in rows]

    def delete_version(self, version: int) -> None:
        self._write("DELETE FROM versions WHERE id=?", (version,))

    def cid_in_use(self, cid: str) -> bool:
        """Whether a version other than one waiting to be unpinned uses ``cid``."""
        row = self._one(
            "SELECT 1 FROM versions WHERE cid=? AND state != 'unpin' LIMIT 1", (cid,)
        )
        return row is not None

    def all_cids(self) -> set[str]:
        """Every CID a version row (of any state) names."""
        return {str(r[0]) for r in self._all("SELECT DISTINCT cid FROM versions")}

    def all_inode_ids(self) -> list[int]:
        return [int(r[0]) for r in self._all("SELECT id FROM inodes ORDER BY id")]

    def all_dentries(self) -> list[Dentry]:
        rows = self._all("SELECT id, parent, name, inode FROM dentries ORDER BY id")
        return [Dentry(int(r[0]), int(r[1]), bytes(r[2]), int(r[3])) for r in rows]

    def all_version_ids(self) -> list[int]:
        return [int(r[0]) for r in self._all("SELECT id FROM versions ORDER BY id")]

    def current_cids(self) -> set[str]:
        rows = self._all("SELECT cid FROM versions WHERE superseded_ns IS NULL")
        return {str(r[0]) for r in rows}

    def version_counts(self) -> dict[str, int]:
        rows = self._all(
            "SELECT state, count(*) FROM versions WHERE superseded_ns IS NULL "
            "GROUP BY state"
        )
        return {str(state): int(count) for state, count in rows}

    def stored_bytes(self) -> int:
        row = self._one("SELECT coalesce(sum(stored_size), 0) FROM versions")
        return int(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
        )

    # The pin queue

    def next_pin_work(self, now_ns: int) -> VersionRow | None:
        """The oldest version to push whose retry time has come: queued ones
        first, then failed ones that are retried."""
        row = self._one(
            f"SELECT {VERSION_COLUMNS} FROM versions "
            "WHERE state IN ('queued', 'failed') AND next_try_ns <= ? "
            "ORDER BY state = 'failed', id LIMIT 1",
            (now_ns,),
        )
        return None if row is None else VersionRow(*row)

    def next_retry_ns(self) -> int | None:
        row = self._one(
            "SELECT min(next_try_ns) FROM versions WHERE state IN ('queued', 'failed')"
        )
        return None if row[0] is None else int(row[0])

    def set_pin_state(
        self,
        version: int,
        state: str,
        *,
        reason: str | None = None,
        attempts: int | None = None,
        next_try_ns: int | None = None,
    ) -> None:
        columns: dict[str, object] = {"state": state, "reason": reason}
        if attempts is not None:
            columns["attempts"] = attempts
        if next_try_ns is not None:
            columns["next_try_ns"] = next_try_ns
        names = ", ".join(f"{name}=?" for name in columns)
        self._write(
            f"UPDATE versions SET {names} WHERE id=?", (*columns.values(), version)
        )

    def reset_retry_times(self) -> None:
        """Make every queued version due now."""
        self._write("UPDATE versions SET next_try_ns=0 WHERE state='queued'")

    def versions_to_unpin(self) -> list[VersionRow]:
        rows = self._all(
            f"SELECT {VERSION_COLUMNS} FROM versions WHERE state='unpin' ORDER BY id"
        )
        return [VersionRow(*r) for r in rows]

    def release_versions_of(self, inode: int) -> None:
        """Mark every version of a deleted file superseded (for retention)."""
        self._write(
            "UPDATE versions SET superseded_ns=? "
            "WHERE inode=? AND superseded_ns IS NULL",
            (time.time_ns(), inode),
        )

    def inodes_with_superseded(self) -> list[int]:
        rows = self._all(
            "SELECT DISTINCT inode FROM versions "
            "WHERE superseded_ns IS NOT NULL AND state != 'unpin'"
        )
        return [int(r[0]) for r in rows]

    def requeue_interrupted(self, keep: Collection[int] = ()) -> int:
        """Versions left ``pinning`` by a stopped daemon (or a push that ended
        without a word) go back in the queue, except those in ``keep``."""
        if not keep:
            return self._write(
                "UPDATE versions SET state='queued' WHERE state='pinning'"
            ).rowcount
        marks = ", ".join("?" * len(keep))
        return self._write(
            f"UPDATE versions SET state='queued' "
            f"WHERE state='pinning' AND id NOT IN ({marks})",
            tuple(keep),
        ).rowcount

    def queue_local_versions(self) -> int:
        """Queue versions written while no node was configured."""
        return self._write(
            "UPDATE versions SET state='queued', next_try_ns=0 WHERE state='local'"
        ).rowcount

    def pushed_versions(self) -> int:
        """Versions, superseded ones too, that were sent to a node: pinned,
        being pushed, or pinned and waiting to be unpinned."""
        row = self._one(
            "SELECT count(*) FROM versions "
            "WHERE state IN ('pinned', 'pinning', 'unpin')"
        )
        return int(row[0])

    def pending_files(self) -> int:
        """Files with a version of any age still queued or being pushed."""
        row = self._one(
            "SELECT count(DISTINCT inode) FROM versions "
            "WHERE state IN ('queued', 'pinning')"
        )
        return int(row[0])

    def requeue_failed(self) -> int:
        """Put every failed version back in the queue, due now (``flush``)."""
        return self._write(
            "UPDATE versions SET state='queued', next_try_ns=0 WHERE state='failed'"
        ).rowcount

    def failed_versions(self) -> list[VersionRow]:
        rows = self._all(
            f"SELECT {VERSION_COLUMNS} FROM versions WHERE state='failed' ORDER BY id"
        )
        return [VersionRow(*r) for r in rows]

    def mark_used(self, cid: str, now_ns: int) -> None:
        self._write("UPDATE versions SET used_ns=? WHERE cid=?", (now_ns, cid))

    def set_local(self, cid: str, local: bool) -> None:
        self._write("UPDATE versions SET local=? WHERE cid=?", (int(local), cid))

    def is_local(self, cid: str) -> bool:
        row = self._one("SELECT max(local) FROM versions WHERE cid=?", (cid,))
        return row[0] is None or bool(row[0])

    def eviction_candidates(self) -> list[VersionRow]:
        """Local streams a node has pinned, least recently used first."""
        rows = self._all(
            f"SELECT {VERSION_COLUMNS} FROM versions "
            "WHERE state='pinned' AND local=1 ORDER BY used_ns, id"
        )
        return [VersionRow(*r) for r in rows]

    def local_bytes(self) -> int:
        """Bytes of the distinct streams kept locally for versions in use."""
        row = self._one(
            "SELECT coalesce(sum(size), 0) FROM (SELECT max(stored_size) AS size "
            "FROM versions WHERE local=1 AND state != 'unpin' GROUP BY cid)"
        )
        return int(row[0])

    # Extended attributes

    def get_xattr(self, inode: int, name: bytes) -> bytes | None:
        row = self._one(
            "SELECT value FROM xattrs WHERE inode=? AND name=?", (inode, name)
        )
        return None if row is None else bytes(row[0])

    def set_xattr(self, inode: int, name: bytes, value: bytes) -> None:
        self._write(
            "INSERT OR REPLACE INTO xattrs (inode, name, value) VALUES (?, ?, ?)",
            (inode, name, value),
        )

    def list_xattrs(self, inode: int) -> list[bytes]:
        rows = self._all(
            "SELECT name FROM xattrs WHERE inode=? ORDER BY name", (inode,)
        )
        return [bytes(r[0]) for r in rows]

    def remove_xattr(self, inode: int, name: bytes) -> bool:
        cursor = self._write(
            "DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name)
        )
        return cursor.rowcount > 0
