"""Check a vault no daemon serves, and repair what can be repaired without loss.

The checks, in the order they run (a finding's ``kind`` in brackets):

1. SQLite's ``integrity_check`` (``index-corrupt``). A damaged index is never
   written to: the other checks still run, but nothing is repaired.
2. ``staging/`` holds nothing while no daemon runs (``stale-staging``).
3. The tree, walked from the root: a name whose inode is missing, or whose
   directory is missing, is not a directory or cannot be reached from the root
   (``dangling-dentry``); an inode no remaining name points to
   (``orphan-inode``); an ``nlink`` that differs from the names, or for a
   directory from 2 plus its subdirectories (``nlink``).
4. Versions: a version of an inode that does not exist and is not waiting to
   be unpinned (``orphan-version``); a file whose current version is not in
   the index (``missing-version``).
5. Every stream a version uses: its DAG is recomputed and must give the CID
   and length in the index (``damaged-stream``). A current version's stream
   must be local unless the node holds it (``missing-stream``), and a version
   the index calls pinned must be in the node's pin set when the node answers
   (``missing-pin``).
6. Streams in the store that no version uses (``unreferenced-stream``).

Repairs only ever drop what nothing uses or re-derive what other rows already
say: stale staging copies and unreferenced streams are deleted, dangling names
removed, ``nlink`` recomputed, orphans removed as the vault removes a deleted
file (pinned versions marked ``unpin``, the rest forgotten), a stream the node
still pins but that is missing locally marked evicted, and a lost pin queued
again. A damaged stream, a missing version or a lost stream is reported and
left alone: only a backup or the node can give that content back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from jwtfs.blocks.cid import Cid, CidError
from jwtfs.blocks.store import BlockStore
from jwtfs.blocks.unixfs import build_dag_from_file
from jwtfs.config import Config
from jwtfs.errors import ConfigError, NotFoundError, RemoteError, StoreError
from jwtfs.remote.kubo import KuboClient
from jwtfs.vault.index import Index
from jwtfs.vault.schema import ROOT_INODE, Dentry, InodeRow, VersionRow

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Finding:
    """One problem: what kind, where, why, and whether this run repaired it."""

    kind: str
    subject: str
    detail: str
    repaired: bool = False


@dataclass
class FsckReport:
    """What ``check_vault`` found and did."""

    index_integrity: str = "ok"
    versions_checked: int = 0
    streams: int = 0
    # How the pins were checked: against which node, or why not.
    node: str = "no node configured; pins not checked"
    findings: list[Finding] = field(default_factory=list)

    @property
    def unrepaired(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]

    @property
    def clean(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, object]:
        return {
            "clean": self.clean,
            "index_integrity": self.index_integrity,
            "versions_checked": self.versions_checked,
            "streams": self.streams,
            "node": self.node,
            "findings": [
                {
                    "kind": f.kind,
                    "subject": f.subject,
                    "detail": f.detail,
                    "repaired": f.repaired,
                }
                for f in self.findings
            ],
            "unrepaired": len(self.unrepaired),
        }


def check_vault(
    config: Config,
    *,
    repair: bool,
    client: KuboClient | None = None,
    progress: Progress | None = None,
) -> FsckReport:
    """Check the vault of ``config`` and, with ``repair``, fix what is safe.

    The caller holds the vault lock, so no daemon changes the vault meanwhile.
    Pins are checked against ``client``, or a client of ``config.ipfs.api``
    when one is configured; the client is closed when this returns. A node
    that does not answer leaves the pins unchecked, which the report says.
    ``progress(done, total)`` is called after each version is checked.

    Raises:
        ConfigError: there is no index (no vault), or the node's URL is bad.
        StoreError: the store could not be read, or a repair not be written.
    """
    if not config.index_file.exists():
        raise ConfigError(f"{config.index_file}: no index; run 'jwtfs init'")
    report = FsckReport()
    try:
        index = Index(config.index_file, readonly=not repair)
    except StoreError as err:
        report.index_integrity = str(err)
        report.findings.append(
            Finding("index-corrupt", str(config.index_file), str(err))
        )
        if client is not None:
            trio.run(client.aclose)
        return report
    try:
        checker = _Checker(config, index, report, repair=repair)
        checker.run(_node_pins(config, report, client), progress)
    except StoreError as err:
        # A damaged page shows up only when a query reaches it.
        report.index_integrity = str(err)
        report.findings.append(
            Finding("index-corrupt", str(config.index_file), str(err))
        )
    finally:
        index.close()
    return report


def _node_pins(
    config: Config, report: FsckReport, client: KuboClient | None
) -> set[str] | None:
    """The node's recursive pins, or None when there is no node or no answer."""
    label = repr(client)
    if client is None:
        if config.ipfs.api is None:
            return None
        label = config.ipfs.api
        client = KuboClient(
            config.ipfs.api,
            authorization=config.ipfs.authorization,
            timeout=config.ipfs.timeout,
        )
    node = client

    async def ask() -> set[Cid]:
        async with node:
            return await node.pin_ls()

    try:
        pins = trio.run(ask)
    except RemoteError as err:
        report.node = f"{label} did not answer ({err}); pins not checked"
        return None
    report.node = f"{label}: {len(pins)} pins"
    return {str(cid) for cid in pins}


class _Checker:
    """One run of the checks over one open index."""

    def __init__(
        self, config: Config, index: Index, report: FsckReport, *, repair: bool
    ) -> None:
        self.index = index
        self.store = BlockStore(config.store_dir)
        self.staging = config.staging_dir
        self.report = report
        self.repair = repair
        self.inodes: dict[int, InodeRow] = {}
        self.dentries: list[Dentry] = []
        self.orphans: set[int] = set()

    def found(self, kind: str, subject: str, detail: str, *, fixable: bool) -> bool:
        """Record a finding; return whether to repair it now."""
        fix = fixable and self.repair
        self.report.findings.append(Finding(kind, subject, detail, repaired=fix))
        return fix

    def run(self, pins: set[str] | None, progress: Progress | None) -> None:
        verdict = self.index.integrity_check()
        self.report.index_integrity = verdict
        if verdict != "ok":
            self.found("index-corrupt", "index", verdict, fixable=False)
            self.repair = False
        try:
            self.check_staging()
            self.check_tree()
            self.check_versions()
            self.check_streams(pins, progress)
            self.check_unreferenced()
        except StoreError as err:
            if verdict == "ok":
                raise
            self.found(
                "index-corrupt", "index", f"cannot read on: {err}", fixable=False
            )

    # Staging

    def check_staging(self) -> None:
        if not self.staging.is_dir():
            return
        for leftover in sorted(self.staging.iterdir()):
            is_file = leftover.is_file() and not leftover.is_symlink()
            detail = "left by a daemon that stopped mid-write"
            if not is_file:
                detail = "not a staging file; remove it by hand"
            if self.found(
                "stale-staging", f"staging/{leftover.name}", detail, fixable=is_file
            ):
                leftover.unlink()

    # The tree

    def check_tree(self) -> None:
        self.inodes = {
            i: row for i in _inode_ids(self.index) if (row := self.index.get_inode(i))
        }
        dentries = _all_dentries(self.index)
        reachable = self.reachable(dentries)
        for entry in dentries:
            reason = self.dangling(entry, reachable)
            if reason is None:
                self.dentries.append(entry)
            elif self.found(
                "dangling-dentry", _dentry_subject(entry), reason, fixable=True
            ):
                self.index.delete_dentry(entry.parent, entry.name)
        named = {entry.inode for entry in self.dentries}
        for inode in sorted(self.inodes):
            if inode != ROOT_INODE and inode not in named:
                self.orphan(inode)
        self.check_nlinks()

    def reachable(self, dentries: list[Dentry]) -> set[int]:
        """Directories reachable from the root through names of existing inodes."""
        children: dict[int, list[Dentry]] = defaultdict(list)
        for entry in dentries:
            children[entry.parent].append(entry)
        found = {ROOT_INODE}
        pending = [ROOT_INODE]
        while pending:
            for entry in children.get(pending.pop(), []):
                row = self.inodes.get(entry.inode)
                if row is not None and row.is_dir and entry.inode not in found:
                    found.add(entry.inode)
                    pending.append(entry.inode)
        return found

    def dangling(self, entry: Dentry, reachable: set[int]) -> str | None:
        """Why ``entry`` is not a sound name, or None when it is."""
        if entry.inode not in self.inodes:
            return f"names inode {entry.inode}, which does not exist"
        if entry.inode == ROOT_INODE:
            return "names the root directory"
        parent = self.inodes.get(entry.parent)
        if parent is None:
            return f"lies in directory {entry.parent}, which does not exist"
        if not parent.is_dir:
            return f"lies in inode {entry.parent}, which is not a directory"
        if entry.parent not in reachable:
            return f"lies in directory {entry.parent}, which the root cannot reach"
        return None

    def orphan(self, inode: int) -> None:
        versions = self.index.versions_of(inode)
        self.orphans.add(inode)
        detail = f"no name points to it; {len(versions)} versions"
        if self.found("orphan-inode", f"inode {inode}", detail, fixable=True):
            with self.index.transaction():
                self.index.release_versions_of(inode)
                self.index.delete_inode(inode)
                for version in versions:
                    self.release(version)
            self.drop_streams(versions)

    def check_nlinks(self) -> None:
        names: dict[int, int] = defaultdict(int)
        subdirs: dict[int, int] = defaultdict(int)
        for entry in self.dentries:
            names[entry.inode] += 1
            if self.inodes[entry.inode].is_dir:
                subdirs[entry.parent] += 1
        for inode, row in sorted(self.inodes.items()):
            if inode in self.orphans:
                continue
            expected = 2 + subdirs[inode] if row.is_dir else names[inode]
            if row.nlink == expected:
                continue
            detail = f"nlink is {row.nlink}, the names say {expected}"
            if self.found("nlink", f"inode {inode}", detail, fixable=True):
                self.index.update_inode(inode, nlink=expected)

    # Versions

    def check_versions(self) -> None:
        for version_id in _version_ids(self.index):
            version = self.index.get_version(version_id)
            if version is None or version.state == "unpin":
                continue
            if version.inode in self.inodes:
                continue
            detail = f"belongs to inode {version.inode}, which does not exist"
            if self.found(
                "orphan-version", _version_subject(version), detail, fixable=True
            ):
                with self.index.transaction():
                    self.index.release_versions_of(version.inode)
                    self.release(version)
                self.drop_streams([version])
        for inode, row in sorted(self.inodes.items()):
            if inode in self.orphans or not row.is_reg or row.version is None:
                continue
            version = self.index.get_version(row.version)
            if version is None or version.inode != inode:
                detail = f"its current version {row.version} is not in the index"
                self.found("missing-version", f"inode {inode}", detail, fixable=False)

    def release(self, version: VersionRow) -> None:
        """Let go of a version as the vault does when its file is deleted.

        A version the node holds is left for the pin queue to unpin; one
        already waiting for that stays as it is, so the pin is not leaked.
        """
        if version.state in ("pinned", "pinning"):
            self.index.set_pin_state(version.id, "unpin")
        elif version.state != "unpin":
            self.index.delete_version(version.id)

    def drop_streams(self, versions: list[VersionRow]) -> None:
        """Delete the local streams of released versions that nothing else uses.

        Called after the transaction that released them has committed, so a
        crash in between leaves an unreferenced stream, never a lost one.
        """
        for cid in {v.cid for v in versions}:
            if not self.index.cid_in_use(cid):
                self.store.remove_stream(Cid(cid))

    # Streams

    def current_versions(self) -> set[int]:
        return {
            row.version
            for inode, row in self.inodes.items()
            if row.is_reg and row.version is not None and inode not in self.orphans
        }

    def check_streams(self, pins: set[str] | None, progress: Progress | None) -> None:
        current = self.current_versions()
        versions = [
            v
            for v in map(self.index.get_version, _version_ids(self.index))
            if v is not None
            and v.state != "unpin"
            and v.inode in self.inodes
            and v.inode not in self.orphans
        ]
        verdicts: dict[str, str | None] = {}
        for done, version in enumerate(versions, 1):
            self.check_version(version, version.id in current, pins, verdicts)
            self.report.versions_checked = done
            if progress is not None:
                progress(done, len(versions))

    def check_version(
        self,
        version: VersionRow,
        current: bool,
        pins: set[str] | None,
        verdicts: dict[str, str | None],
    ) -> None:
        subject = _version_subject(version)
        try:
            present = self.store.has_stream(Cid(version.cid))
        except CidError:
            self.found("damaged-stream", subject, "its CID is malformed", fixable=False)
            return
        if present:
            if version.cid not in verdicts:
                verdicts[version.cid] = self.verify(version)
            problem = verdicts[version.cid]
            if problem is not None:
                self.found("damaged-stream", subject, problem, fixable=False)
            elif version.state == "pinned" and pins is not None:
                self.check_pin(version, pins)
        elif current:
            self.check_missing(version, pins)

    def verify(self, version: VersionRow) -> str | None:
        """Why the local stream of ``version`` is damaged, or None when sound."""
        try:
            dag = build_dag_from_file(self.store.stream_path(Cid(version.cid)))
        except NotFoundError:
            return "the stream vanished while being checked"
        except OSError as err:
            return f"the stream cannot be read ({err.strerror})"
        if dag.root != version.cid:
            return f"the stream's content hashes to {dag.root}"
        if dag.length != version.stored_size:
            size = version.stored_size
            return f"the stream has {dag.length} bytes, the index says {size}"
        return None

    def check_pin(self, version: VersionRow, pins: set[str]) -> None:
        if version.cid in pins:
            return
        detail = (
            "the index says pinned, the node does not pin it (repair: queue it again)"
        )
        if self.found("missing-pin", _version_subject(version), detail, fixable=True):
            self.index.set_pin_state(version.id, "queued", next_try_ns=0)

    def check_missing(self, version: VersionRow, pins: set[str] | None) -> None:
        """A current version whose stream is not in the store."""
        subject = _version_subject(version)
        held = version.state == "pinned" and (pins is None or version.cid in pins)
        if not held:
            where = (
                "not pinned" if version.state != "pinned" else "not in the node's pins"
            )
            detail = f"the stream is neither local nor on the node ({where}): lost"
            self.found("missing-stream", subject, detail, fixable=False)
            return
        if not version.local:
            return
        detail = "the local copy is gone, the node pins it (repair: mark it evicted)"
        if self.found("missing-stream", subject, detail, fixable=True):
            self.index.set_local(version.cid, False)

    def check_unreferenced(self) -> None:
        used = {
            v.cid
            for v in map(self.index.get_version, _version_ids(self.index))
            if v is not None
        }
        streams = list(self.store.iter_streams())
        self.report.streams = len(streams)
        for cid in streams:
            if cid in used:
                continue
            detail = "in the store, but no version uses it"
            if self.found("unreferenced-stream", f"stream {cid}", detail, fixable=True):
                self.store.remove_stream(cid)


def _inode_ids(index: Index) -> list[int]:
    return index.all_inode_ids()


def _all_dentries(index: Index) -> list[Dentry]:
    return index.all_dentries()


def _version_ids(index: Index) -> list[int]:
    return index.all_version_ids()


def _dentry_subject(entry: Dentry) -> str:
    name = entry.name.decode("utf-8", errors="backslashreplace")
    return f"name {name!r} in directory {entry.parent}"


def _version_subject(version: VersionRow) -> str:
    return f"version {version.id} of inode {version.inode} ({version.cid})"
