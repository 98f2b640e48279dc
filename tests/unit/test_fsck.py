"""``jwtfs fsck`` on real vaults: built through a mount, then damaged on disk.

One vault is built once per module (through a real mount: files, a
directory tree, a hard link, an empty file), and every test works on a copy
of it. The damage is done the way it happens in life, behind the daemon's
back: rows changed with ``sqlite3``, stream files flipped, cut or deleted.
Pins are checked against ``PinSetNode``, a loopback stand-in that answers
only ``pin/ls`` with a set the test chooses (the client's ``pin/ls`` itself is
tested against a real node in ``tests/ipfs``).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pty
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from jwtfs.blocks.store import BlockStore
from jwtfs.blocks.unixfs import build_dag_from_file
from tests.conftest import needs_fuse
from tests.harness import VaultHarness
from tests.ipfs.fakes import closed_loopback_port

pytestmark = needs_fuse

A = b"alpha\n"
B = b"beta\n" * 1000
NO_NODE = "no node configured; pins not checked"


@dataclass
class Built:
    """The pristine vault and what the index holds for it."""

    harness: VaultHarness
    inode: dict[str, int]
    cid: dict[str, str]
    version: dict[str, int]


def _facts(
    harness: VaultHarness,
) -> tuple[dict[str, int], dict[str, str], dict[str, int]]:
    # closing(): a connection's own "with" ends a transaction but leaves it
    # open, and SQLite would delete the -wal and -shm files whenever the
    # garbage collector closed it, perhaps while a test copies the vault.
    with contextlib.closing(_db(harness)) as db:
        rows = db.execute(
            "SELECT d.name, d.inode, v.id, v.cid FROM dentries d "
            "JOIN inodes i ON i.id = d.inode LEFT JOIN versions v ON v.id = i.version"
        ).fetchall()
    inode = {name.decode(): ino for name, ino, _, _ in rows}
    version = {name.decode(): vid for name, _, vid, _ in rows if vid is not None}
    cid = {name.decode(): c for name, _, _, c in rows if c is not None}
    return inode, cid, version


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    harness = VaultHarness(tmp_path_factory.mktemp("pristine"))
    harness.init()
    harness.set_token(harness.issue(read=("/**",), write=("/**",)))
    harness.mount()
    try:
        (harness.mnt / "a.txt").write_bytes(A)
        (harness.mnt / "d" / "sub").mkdir(parents=True)
        (harness.mnt / "d" / "b.txt").write_bytes(B)
        os.link(harness.mnt / "a.txt", harness.mnt / "d" / "h")
        (harness.mnt / "empty").touch()
    finally:
        harness.cleanup()
    yield Built(harness, *_facts(harness))


@pytest.fixture
def built(pristine: Built, tmp_path: Path) -> Iterator[Built]:
    """A copy of the pristine vault, its own to damage."""
    root = tmp_path / "vault"
    shutil.copytree(pristine.harness.root, root, symlinks=True)
    harness = VaultHarness(root)
    harness.set_config("vault", "data_dir", str(harness.data_dir))
    yield Built(harness, pristine.inode, pristine.cid, pristine.version)
    harness.cleanup()


def _db(harness: VaultHarness) -> sqlite3.Connection:
    return sqlite3.connect(harness.data_dir / "index.sqlite3", isolation_level=None)


def sql(harness: VaultHarness, statement: str, *args: object) -> list[tuple[Any, ...]]:
    db = _db(harness)
    try:
        return db.execute(statement, args).fetchall()
    finally:
        db.close()


def fsck(harness: VaultHarness, *args: str) -> tuple[int, dict[str, Any]]:
    result = harness.jwtfs("fsck", "--json", *args, check=False)
    assert result.stderr == ""
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def findings(report: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    return [
        (f["kind"], f["subject"], f["detail"], f["repaired"])
        for f in report["findings"]
    ]


def version_subject(built: Built, name: str) -> str:
    version, inode, cid = built.version[name], built.inode[name], built.cid[name]
    return f"version {version} of inode {inode} ({cid})"


def assert_clean(harness: VaultHarness) -> None:
    code, report = fsck(harness, "--no-repair")
    assert (code, findings(report)) == (0, [])


# A clean vault, and the rules of running


def test_clean_vault(built: Built) -> None:
    code, report = fsck(built.harness, "--no-repair")
    assert code == 0
    assert report == {
        "clean": True,
        "index_integrity": "ok",
        "versions_checked": 3,
        "streams": 3,
        "node": NO_NODE,
        "findings": [],
        "unrepaired": 0,
    }
    result = built.harness.jwtfs("fsck")
    assert result.stdout.splitlines() == [
        f"node      {NO_NODE}",
        "fsck: clean (3 versions, 3 streams checked)",
    ]
    assert result.stderr == ""


def test_refuses_while_mounted(built: Built) -> None:
    harness = built.harness
    harness.mount()
    result = harness.jwtfs("fsck", check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"jwtfs: {harness.data_dir}: the vault is mounted; "
        f"run 'jwtfs umount {harness.mnt}' before fsck\n"
    )
    harness.umount()
    assert_clean(harness)


def test_progress_on_a_terminal(built: Built) -> None:
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "jwtfs", "fsck", "--no-repair"],
            env=built.harness.env,
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
            check=False,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                part = os.read(controller, 4096)
            except OSError:
                break
            if not part:
                break
            shown += part
    finally:
        os.close(controller)
    assert result.returncode == 0
    # The terminal turns the final "\n" into "\r\n".
    assert shown == (
        b"\rchecked 1/3 versions\rchecked 2/3 versions\rchecked 3/3 versions\r\n"
    )


# The tree


def test_nlink_counts_are_reported_then_repaired(built: Built) -> None:
    harness = built.harness
    a, d = built.inode["a.txt"], built.inode["d"]
    sql(harness, "UPDATE inodes SET nlink=5 WHERE id=?", a)
    sql(harness, "UPDATE inodes SET nlink=7 WHERE id=?", d)
    expected = [
        ("nlink", f"inode {a}", "nlink is 5, the names say 2"),
        ("nlink", f"inode {d}", "nlink is 7, the names say 3"),
    ]

    result = harness.jwtfs("fsck", "--no-repair", check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"FOUND     nlink                inode {a}: nlink is 5, the names say 2",
        f"FOUND     nlink                inode {d}: nlink is 7, the names say 3",
        f"node      {NO_NODE}",
        "fsck: 2 problems, 0 repaired, 2 left (3 versions, 3 streams checked)",
    ]
    assert sql(
        harness, "SELECT nlink FROM inodes WHERE id IN (?, ?) ORDER BY id", a, d
    ) == [
        (5,),
        (7,),
    ]

    code, report = fsck(harness)
    assert code == 0
    assert findings(report) == [(*f, True) for f in expected]
    assert report["unrepaired"] == 0
    assert sql(
        harness, "SELECT nlink FROM inodes WHERE id IN (?, ?) ORDER BY id", a, d
    ) == [
        (2,),
        (3,),
    ]
    assert_clean(harness)


def test_dangling_dentries_are_removed(built: Built) -> None:
    harness = built.harness
    a = built.inode["a.txt"]
    sql(
        harness,
        "INSERT INTO dentries (parent, name, inode) VALUES (1, ?, 999)",
        b"ghost",
    )
    sql(
        harness,
        "INSERT INTO dentries (parent, name, inode) VALUES (998, ?, ?)",
        b"lost",
        a,
    )
    expected = [
        (
            "dangling-dentry",
            "name 'ghost' in directory 1",
            "names inode 999, which does not exist",
        ),
        (
            "dangling-dentry",
            "name 'lost' in directory 998",
            "lies in directory 998, which does not exist",
        ),
    ]

    code, report = fsck(harness, "--no-repair")
    assert (code, findings(report)) == (1, [(*f, False) for f in expected])
    code, report = fsck(harness)
    assert (code, findings(report)) == (0, [(*f, True) for f in expected])
    assert sql(
        harness, "SELECT count(*) FROM dentries WHERE name IN (?, ?)", b"ghost", b"lost"
    ) == [(0,)]
    assert_clean(harness)

    harness.set_token(harness.issue(read=("/**",)))
    harness.mount()
    try:
        assert sorted(os.listdir(harness.mnt)) == ["a.txt", "d", "empty"]
        assert (harness.mnt / "a.txt").read_bytes() == A
        assert os.stat(harness.mnt / "a.txt").st_nlink == 2
    finally:
        harness.umount()


def test_orphan_file_is_removed_with_its_content(built: Built) -> None:
    harness = built.harness
    b = built.inode["b.txt"]
    sql(harness, "DELETE FROM dentries WHERE name=?", b"b.txt")
    expected = ("orphan-inode", f"inode {b}", "no name points to it; 1 versions")

    code, report = fsck(harness, "--no-repair")
    assert (code, findings(report)) == (1, [(*expected, False)])
    assert harness.stream_file(built.cid["b.txt"]).exists()

    code, report = fsck(harness)
    assert (code, findings(report)) == (0, [(*expected, True)])
    assert sql(harness, "SELECT count(*) FROM inodes WHERE id=?", b) == [(0,)]
    assert sql(harness, "SELECT count(*) FROM versions WHERE inode=?", b) == [(0,)]
    assert not harness.stream_file(built.cid["b.txt"]).exists()
    assert_clean(harness)


def test_detached_directory_takes_its_tree_along(built: Built) -> None:
    harness = built.harness
    ino = built.inode
    sql(harness, "DELETE FROM dentries WHERE name=?", b"d")
    unreachable = f"lies in directory {ino['d']}, which the root cannot reach"
    expected = [
        ("dangling-dentry", f"name 'sub' in directory {ino['d']}", unreachable),
        ("dangling-dentry", f"name 'b.txt' in directory {ino['d']}", unreachable),
        ("dangling-dentry", f"name 'h' in directory {ino['d']}", unreachable),
        ("orphan-inode", f"inode {ino['d']}", "no name points to it; 0 versions"),
        ("orphan-inode", f"inode {ino['sub']}", "no name points to it; 0 versions"),
        ("orphan-inode", f"inode {ino['b.txt']}", "no name points to it; 1 versions"),
        ("nlink", "inode 1", "nlink is 3, the names say 2"),
        ("nlink", f"inode {ino['a.txt']}", "nlink is 2, the names say 1"),
    ]

    code, report = fsck(harness, "--no-repair")
    assert (code, findings(report)) == (1, [(*f, False) for f in expected])
    code, report = fsck(harness)
    assert (code, findings(report)) == (0, [(*f, True) for f in expected])
    assert_clean(harness)
    assert sql(harness, "SELECT id FROM inodes ORDER BY id") == [
        (1,),
        (ino["a.txt"],),
        (ino["empty"],),
    ]

    harness.set_token(harness.issue(read=("/**",)))
    harness.mount()
    try:
        assert sorted(os.listdir(harness.mnt)) == ["a.txt", "empty"]
        assert (harness.mnt / "a.txt").read_bytes() == A
        assert os.stat(harness.mnt / "a.txt").st_nlink == 1
        assert os.stat(harness.mnt).st_nlink == 2
    finally:
        harness.umount()


# Versions


def test_versions_of_a_missing_inode_are_released(built: Built) -> None:
    harness = built.harness
    b, d = built.inode["b.txt"], built.inode["d"]
    a_version = built.version["a.txt"]
    sql(harness, "DELETE FROM inodes WHERE id=?", b)
    # A version the node holds is handed to the pin queue, not forgotten.
    sql(harness, "UPDATE versions SET inode=? WHERE id=?", 999, a_version)
    sql(
        harness,
        "INSERT INTO versions (inode, cid, size, stored_size, created_ns, state) "
        "SELECT 998, cid, size, stored_size, created_ns, 'pinned' FROM versions "
        "WHERE id=?",
        a_version,
    )
    pinned = sql(harness, "SELECT max(id) FROM versions")[0][0]
    sql(
        harness,
        "UPDATE versions SET inode=? WHERE id=?",
        built.inode["a.txt"],
        a_version,
    )
    a_cid, b_cid = built.cid["a.txt"], built.cid["b.txt"]
    expected = [
        (
            "dangling-dentry",
            f"name 'b.txt' in directory {d}",
            f"names inode {b}, which does not exist",
        ),
        (
            "orphan-version",
            version_subject(built, "b.txt"),
            f"belongs to inode {b}, which does not exist",
        ),
        (
            "orphan-version",
            f"version {pinned} of inode 998 ({a_cid})",
            "belongs to inode 998, which does not exist",
        ),
    ]

    code, report = fsck(harness, "--no-repair")
    assert (code, findings(report)) == (1, [(*f, False) for f in expected])
    code, report = fsck(harness)
    assert (code, findings(report)) == (0, [(*f, True) for f in expected])
    assert sql(
        harness, "SELECT id, state FROM versions WHERE inode IN (?, 998) ORDER BY id", b
    ) == [(pinned, "unpin")]
    assert not harness.stream_file(b_cid).exists()
    # a.txt still uses the stream the released version shared with it.
    assert harness.stream_file(a_cid).exists()
    assert_clean(harness)


def test_missing_current_version_is_reported(built: Built) -> None:
    harness = built.harness
    a = built.inode["a.txt"]
    sql(harness, "UPDATE inodes SET version=42 WHERE id=?", a)
    expected = (
        "missing-version",
        f"inode {a}",
        "its current version 42 is not in the index",
        False,
    )
    for args in (("--no-repair",), ()):
        code, report = fsck(harness, *args)
        assert (code, findings(report)) == (1, [expected])
        assert report["unrepaired"] == 1
    assert sql(harness, "SELECT version FROM inodes WHERE id=?", a) == [(42,)]


# Streams


def test_damaged_streams_are_reported_not_touched(built: Built) -> None:
    harness = built.harness
    a_file = harness.stream_file(built.cid["a.txt"])
    b_file = harness.stream_file(built.cid["b.txt"])
    a_file.chmod(0o600)
    with a_file.open("r+b") as stream:
        stream.seek(40)
        byte = stream.read(1)
        stream.seek(40)
        stream.write(bytes([byte[0] ^ 1]))
    b_file.chmod(0o600)
    os.truncate(b_file, 100)
    flipped = build_dag_from_file(a_file).root
    cut = build_dag_from_file(b_file).root
    damaged_a = a_file.read_bytes()
    expected = [
        (
            "damaged-stream",
            version_subject(built, "a.txt"),
            f"the stream's content hashes to {flipped}",
            False,
        ),
        (
            "damaged-stream",
            version_subject(built, "b.txt"),
            f"the stream's content hashes to {cut}",
            False,
        ),
    ]
    for args in (("--no-repair",), ()):
        code, report = fsck(harness, *args)
        assert (code, findings(report)) == (1, expected)
    assert a_file.read_bytes() == damaged_a
    assert b_file.stat().st_size == 100


def test_stream_of_the_wrong_length_is_damaged(built: Built) -> None:
    harness = built.harness
    a_version = built.version["a.txt"]
    sql(harness, "UPDATE versions SET stored_size=65 WHERE id=?", a_version)
    code, report = fsck(harness)
    assert (code, findings(report)) == (
        1,
        [
            (
                "damaged-stream",
                version_subject(built, "a.txt"),
                "the stream has 66 bytes, the index says 65",
                False,
            )
        ],
    )


def test_lost_stream_is_reported(built: Built) -> None:
    harness = built.harness
    harness.stream_file(built.cid["a.txt"]).unlink()
    expected = (
        "missing-stream",
        version_subject(built, "a.txt"),
        "the stream is neither local nor on the node (not pinned): lost",
        False,
    )
    for args in (("--no-repair",), ()):
        code, report = fsck(harness, *args)
        assert (code, findings(report)) == (1, [expected])
        assert report["versions_checked"] == 3
        assert report["streams"] == 2


def test_unreferenced_stream_is_removed(built: Built) -> None:
    harness = built.harness
    store_dir = harness.data_dir / "store"
    loose = harness.root / "loose"
    loose.write_bytes(os.urandom(300 * 1024))
    cid = BlockStore(store_dir).add_stream(loose, durable=False).root
    node = store_dir / "nodes" / cid[-2:] / cid
    assert node.exists()
    expected = (
        "unreferenced-stream",
        f"stream {cid}",
        "in the store, but no version uses it",
    )

    code, report = fsck(harness, "--no-repair")
    assert (code, findings(report), report["streams"]) == (1, [(*expected, False)], 4)
    code, report = fsck(harness)
    assert (code, findings(report)) == (0, [(*expected, True)])
    assert not harness.stream_file(cid).exists()
    assert not node.exists()
    assert_clean(harness)


def test_stale_staging_files_are_removed(built: Built) -> None:
    harness = built.harness
    staging = harness.data_dir / "staging"
    (staging / "5.0").write_bytes(b"\x00" * 100)
    (staging / "restore.3").write_bytes(b"")
    expected = [
        ("stale-staging", "staging/5.0", "left by a daemon that stopped mid-write"),
        (
            "stale-staging",
            "staging/restore.3",
            "left by a daemon that stopped mid-write",
        ),
    ]
    code, report = fsck(harness, "--no-repair")
    assert (code, findings(report)) == (1, [(*f, False) for f in expected])
    code, report = fsck(harness)
    assert (code, findings(report)) == (0, [(*f, True) for f in expected])
    assert list(staging.iterdir()) == []


def test_damaged_index_is_reported_and_not_written(built: Built) -> None:
    harness = built.harness
    index_file = harness.data_dir / "index.sqlite3"
    # The schema now says the index on dentries.inode is on dentries.parent:
    # the database opens, but its index disagrees with its table.
    db = _db(harness)
    db.execute("PRAGMA writable_schema=ON")
    db.execute(
        "UPDATE sqlite_master SET sql='CREATE INDEX dentries_inode ON dentries "
        "(parent)' WHERE name='dentries_inode'"
    )
    db.close()
    before = index_file.read_bytes()
    verdict = "row 1 missing from index dentries_inode"
    for args in (("--no-repair",), ()):
        code, report = fsck(harness, *args)
        assert (code, report["index_integrity"]) == (1, verdict)
        assert findings(report) == [("index-corrupt", "index", verdict, False)]
    assert index_file.read_bytes() == before


def test_damaged_index_page_is_reported(built: Built) -> None:
    harness = built.harness
    index_file = harness.data_dir / "index.sqlite3"
    ((page_size,),) = sql(harness, "PRAGMA page_size")
    ((root_page,),) = sql(
        harness, "SELECT rootpage FROM sqlite_master WHERE name='dentries_inode'"
    )
    with index_file.open("r+b") as db:
        db.seek((root_page - 1) * page_size)
        db.write(b"\xa5" * page_size)
    code, report = fsck(harness)
    assert code == 1
    assert [f[0] for f in findings(report)] == ["index-corrupt"]


# Pins, checked against the node


class _PinListHandler(http.server.BaseHTTPRequestHandler):
    server: _PinListServer

    def do_POST(self) -> None:
        if not self.path.startswith("/api/v0/pin/ls?"):
            self.send_error(404)
            return
        body = json.dumps(
            {"Keys": {cid: {"Type": "recursive"} for cid in self.server.pins}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class _PinListServer(http.server.ThreadingHTTPServer):
    pins: set[str]


class PinSetNode:
    """A loopback server answering ``pin/ls`` with ``pins``, nothing else."""

    def __init__(self, pins: set[str]) -> None:
        self._server = _PinListServer(("127.0.0.1", 0), _PinListHandler)
        self._server.pins = pins
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def mark_pinned(built: Built, name: str) -> None:
    sql(
        built.harness,
        "UPDATE versions SET state='pinned', attempts=1 WHERE id=?",
        built.version[name],
    )


def test_pins_held_by_the_node_are_clean(built: Built) -> None:
    harness = built.harness
    mark_pinned(built, "a.txt")
    with PinSetNode({built.cid["a.txt"], built.cid["b.txt"]}) as node:
        harness.set_config("ipfs", "api", node.url)
        code, report = fsck(harness, "--no-repair")
    assert (code, findings(report), report["node"]) == (0, [], f"{node.url}: 2 pins")


def test_lost_pin_is_queued_again(built: Built) -> None:
    harness = built.harness
    mark_pinned(built, "a.txt")
    expected = (
        "missing-pin",
        version_subject(built, "a.txt"),
        "the index says pinned, the node does not pin it (repair: queue it again)",
    )
    with PinSetNode(set()) as node:
        harness.set_config("ipfs", "api", node.url)
        code, report = fsck(harness, "--no-repair")
        assert (code, findings(report)) == (1, [(*expected, False)])
        code, report = fsck(harness)
        assert (code, findings(report)) == (0, [(*expected, True)])
        assert_clean(harness)
    assert sql(
        harness,
        "SELECT state, next_try_ns, reason FROM versions WHERE id=?",
        built.version["a.txt"],
    ) == [("queued", 0, None)]


def test_missing_local_copy_of_a_pinned_stream_is_marked_evicted(built: Built) -> None:
    harness = built.harness
    mark_pinned(built, "a.txt")
    harness.stream_file(built.cid["a.txt"]).unlink()
    expected = (
        "missing-stream",
        version_subject(built, "a.txt"),
        "the local copy is gone, the node pins it (repair: mark it evicted)",
    )
    with PinSetNode({built.cid["a.txt"]}) as node:
        harness.set_config("ipfs", "api", node.url)
        code, report = fsck(harness, "--no-repair")
        assert (code, findings(report)) == (1, [(*expected, False)])
        code, report = fsck(harness)
        assert (code, findings(report)) == (0, [(*expected, True)])
        assert_clean(harness)
    assert sql(
        harness, "SELECT local FROM versions WHERE id=?", built.version["a.txt"]
    ) == [(0,)]


def test_evicted_stream_the_node_lost_is_reported(built: Built) -> None:
    harness = built.harness
    mark_pinned(built, "a.txt")
    harness.stream_file(built.cid["a.txt"]).unlink()
    sql(harness, "UPDATE versions SET local=0 WHERE id=?", built.version["a.txt"])
    expected = (
        "missing-stream",
        version_subject(built, "a.txt"),
        "the stream is neither local nor on the node (not in the node's pins): lost",
        False,
    )
    with PinSetNode(set()) as node:
        harness.set_config("ipfs", "api", node.url)
        code, report = fsck(harness)
    assert (code, findings(report)) == (1, [expected])


def test_unreachable_node_leaves_pins_unchecked(built: Built) -> None:
    harness = built.harness
    mark_pinned(built, "a.txt")
    url = f"http://127.0.0.1:{closed_loopback_port()}"
    harness.set_config("ipfs", "api", url)
    code, report = fsck(harness)
    assert (code, findings(report)) == (0, [])
    assert report["node"].startswith(f"{url} did not answer (")
    assert report["node"].endswith("); pins not checked")
