"""``jwtfs index``, ``status`` and ``export``: what is stored, where, in what state."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio

from jwtfs.blocks.car import write_car
from jwtfs.blocks.cid import Cid
from jwtfs.blocks.store import BlockStore
from jwtfs.cli.codes import EXIT_OK
from jwtfs.cli.targets import Target, find_target
from jwtfs.config import Config, load_config, with_environment
from jwtfs.errors import ConfigError, JwtfsError, RemoteError
from jwtfs.remote.kubo import KuboClient, NodeTimeoutError, NodeUnreachableError
from jwtfs.vault.fetch import RemoteReader
from jwtfs.vault.index import Index

# How long ``status`` waits for the node before calling it unreachable.
PROBE_SECONDS = 3.0


def show_path(path: bytes) -> str:
    """A path for a terminal, unambiguous: backslashes, control characters and
    bytes that are not UTF-8 are escaped (``\\``, ``\n``, ``\xff``)."""
    out = []
    for char in path.decode("utf-8", errors="surrogateescape"):
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(char) <= 0xDCFF:
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif not char.isprintable():
            out.append(repr(char)[1:-1])
        else:
            out.append(char)
    return "".join(out)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def plural(count: int, noun: str) -> str:
    """``1 version``, ``2 versions``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _open_index(config: Config) -> Index:
    if not config.index_file.exists():
        raise ConfigError(f"{config.index_file}: no index; run 'jwtfs init'")
    return Index(config.index_file, readonly=True)


def index(args: argparse.Namespace) -> int:
    config = load_config()
    prefix = os.fsencode(args.path).rstrip(b"/")
    db = _open_index(config)
    rows = []
    try:
        for path, inode in db.walk():
            if prefix and path != prefix and not path.startswith(prefix + b"/"):
                continue
            row = db.get_inode(inode)
            if row is None or not row.is_reg:
                continue
            version = None if row.version is None else db.get_version(row.version)
            rows.append(
                {
                    "path": show_path(path),
                    "size": row.size,
                    "cid": version.cid if version else None,
                    "state": version.state if version else "empty",
                }
            )
    finally:
        db.close()
    if prefix and not rows and db_missing(config, prefix):
        raise ConfigError(f"{args.path}: no such path in the vault")
    rows.sort(key=lambda r: str(r["path"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for r in rows:
        print(f"{r['state']:<8} {r['size']:>12}  {r['cid'] or '-':<60}  {r['path']}")
    return EXIT_OK


def db_missing(config: Config, path: bytes) -> bool:
    db = _open_index(config)
    try:
        return db.resolve(path) is None
    finally:
        db.close()


def probe_node(api: str, authorization: str | None) -> tuple[str, str]:
    """How the node at ``api`` answers, in ``PROBE_SECONDS`` all told:
    (``reachable``, ``unreachable``, ``not answering`` or ``answering with an
    error``; a detail)."""
    return trio.run(_probe, api, authorization)


async def _probe(api: str, authorization: str | None) -> tuple[str, str]:
    """How the node answers, in ``PROBE_SECONDS`` all told: (state, detail)."""
    with trio.move_on_after(PROBE_SECONDS):
        try:
            async with KuboClient(
                api, authorization=authorization, timeout=PROBE_SECONDS
            ) as client:
                return "reachable", await client.version()
        except NodeUnreachableError as err:
            return "unreachable", str(err)
        except NodeTimeoutError as err:
            return "not answering", str(err)
        except RemoteError as err:
            return "answering with an error", str(err)
    return "not answering", f"no answer within {PROBE_SECONDS:g} s"


def _failed(db: Index) -> list[dict[str, Any]]:
    """Each failed version, with the path of its file while it has one."""
    versions = db.failed_versions()
    if not versions:
        return []
    wanted = {v.inode for v in versions}
    paths = {inode: show_path(path) for path, inode in db.walk() if inode in wanted}
    return [
        {"path": paths.get(v.inode), "cid": v.cid, "reason": v.reason} for v in versions
    ]


def _collect(target: Target) -> dict[str, Any]:
    config = target.config
    db = _open_index(config)
    try:
        versions, size = db.pending_pins()
        report: dict[str, Any] = {
            "vault_id": db.meta("vault_id"),
            "config": str(config.path),
            "data_dir": str(config.data_dir),
            "inodes": db.count_inodes(),
            "index_integrity": db.integrity_check(),
            "states": db.version_counts(),
            "backlog": {
                "files": db.pending_files(),
                "versions": versions,
                "bytes": size,
            },
            "failed": _failed(db),
        }
        meta = {
            key: db.meta(key)
            for key in ("node_state", "node_since", "snapshot_cid", "snapshot_ns")
        }
        # Whether anything may have been sent: a node was ever tried (its state
        # is recorded then), a version is on one, or a snapshot was pinned.
        report["left_machine"] = bool(
            db.pushed_versions() or meta["snapshot_cid"] or meta["node_state"]
        )
    finally:
        db.close()
    usage = BlockStore(config.store_dir).usage()
    report["store"] = {"streams": usage.streams, "bytes": usage.bytes}
    mount = target.mount
    report["mount"] = mount and {"mountpoint": str(mount.mountpoint), "pid": mount.pid}
    report["node"] = _node_report(target, meta["node_state"], meta["node_since"])
    report["snapshot"] = None
    if meta["snapshot_cid"] and meta["snapshot_ns"]:
        taken = int(meta["snapshot_ns"])
        report["snapshot"] = {
            "cid": meta["snapshot_cid"],
            "taken": iso(taken),
            "age_seconds": round(max(0.0, (time.time_ns() - taken) / 1e9)),
        }
    return report


def _node_report(
    target: Target, state: str | None, since: str | None
) -> dict[str, Any]:
    """The node in use, probed, and how the running daemon last found it."""
    node: dict[str, Any] = {"api": target.api, "source": target.api_source()}
    if target.api is None:
        node["why_none"] = target.why_no_node()
        return node
    authorization = target.config.ipfs.authorization
    answer, detail = probe_node(target.api, authorization)
    node.update(reachable=answer == "reachable", answer=answer, detail=detail)
    # The running daemon's own finding only: an older one may be of another node.
    mount = target.mount
    if mount is not None and state and since and int(since) >= mount.started_ns:
        node["last_seen_state"] = state
        node["since"] = iso(int(since))
    return node


def iso(ns: int) -> str:
    """A time in UTC to the second, as ``status`` and ``flush`` show times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def status(args: argparse.Namespace) -> int:
    config = with_environment(load_config())
    report = _collect(find_target(config, args.mountpoint))
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    states = report["states"]
    stored = sum(states.values())
    print(f"vault      {report['vault_id']}")
    print(f"config     {report['config']}")
    print(f"data       {report['data_dir']}")
    if report["mount"] is not None:
        mount = report["mount"]
        print(f"mount      {mount['mountpoint']} (daemon {mount['pid']})")
    print(
        f"files      {stored} stored, {report['inodes']} inodes in the index "
        f"({report['index_integrity']})"
    )
    store = report["store"]
    print(
        f"store      {store['streams']} streams, {human_size(store['bytes'])} on disk"
    )
    print(
        "states     "
        + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "-")
    )
    _print_node(report)
    for failed in report["failed"]:
        where = failed["path"] or "(no longer in the tree)"
        print(f"failed     {where} {failed['cid']}: {failed['reason']}")
    if not report["left_machine"]:
        print(
            "network    nothing has left this machine: no version and no index "
            "snapshot was sent to a node"
        )
    return EXIT_OK


def _print_node(report: dict[str, Any]) -> None:
    node = report["node"]
    if node["api"] is None:
        print(f"node       none ({node['why_none']})")
        return
    answer = node["answer"]
    if answer == "reachable":
        answer += f" (version {node['detail']})"
    else:
        answer += f" ({node['detail']})"
    seen = ""
    if "since" in node:
        state, since = node["last_seen_state"], node["since"]
        seen = f"; the daemon has found it {state} since {since}"
    print(f"node       {node['api']} (from {node['source']}): {answer}{seen}")
    backlog = report["backlog"]
    files = plural(backlog["files"], "file")
    versions = plural(backlog["versions"], "version")
    print(f"backlog    {files}, {versions} ({human_size(backlog['bytes'])}) to pin")
    snapshot = report["snapshot"]
    if snapshot is not None:
        print(
            f"snapshot   {snapshot['cid']} ({snapshot['age_seconds']} s old); "
            "recover with 'jwtfs recover CID'"
        )
    else:
        print("snapshot   none pinned yet")


async def _restore_evicted(config: Config, store: BlockStore, cid: Cid) -> None:
    """Bring an evicted stream back from the node into the store, every block
    checked against its CID, so it can be exported.

    Raises:
        JwtfsError: no node is set to fetch it from.
        RemoteError, IntegrityError: the node failed or sent wrong bytes.
    """
    if config.ipfs.api is None:
        raise JwtfsError(
            f"{cid}: the content is evicted and no IPFS node is set to fetch it "
            "from; set ipfs.api or IPFS_API"
        )
    target = config.staging_dir / f"export.{os.getpid()}"
    async with KuboClient(
        config.ipfs.api,
        authorization=config.ipfs.authorization,
        timeout=config.ipfs.timeout,
    ) as client:
        try:
            reader = RemoteReader(client, timeout=config.ipfs.fetch_timeout)
            await reader.download(cid, target)
            await trio.to_thread.run_sync(
                lambda: store.add_stream(target, durable=False)
            )
        finally:
            target.unlink(missing_ok=True)
    db = Index(config.index_file)
    try:
        db.set_local(str(cid), True)
    finally:
        db.close()


def export(args: argparse.Namespace) -> int:
    config = with_environment(load_config())
    db = _open_index(config)
    try:
        inode = db.resolve(os.fsencode(args.car))
        row = None if inode is None else db.get_inode(inode)
        if row is None or not row.is_reg:
            raise ConfigError(f"{args.car}: no such file in the vault")
        version = None if row.version is None else db.get_version(row.version)
    finally:
        db.close()
    if version is None:
        raise JwtfsError(f"{args.car}: nothing committed yet")
    store = BlockStore(config.store_dir)
    if not store.has_stream(Cid(version.cid)):
        trio.run(_restore_evicted, config, store, Cid(version.cid))
    write_car(store, Cid(version.cid), sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return EXIT_OK
