"""``jwtfs mount``, ``umount`` and ``flush``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import replace

import trio

from jwtfs.blocks.cid import Cid, normalize_cid
from jwtfs.cli.codes import EXIT_FAILURE, EXIT_OK
from jwtfs.cli.reports import human_size, iso, plural, probe_node
from jwtfs.cli.targets import find_target
from jwtfs.config import load_config, with_environment
from jwtfs.crypto.wrapping import open_master_key
from jwtfs.daemon import (
    Backlog,
    check_mount_request,
    count_failed,
    flush_backlog,
    pin_client,
    read_key_from,
    serve,
    setup_logging,
    start_background,
    unmount,
    vault_paths,
)
from jwtfs.errors import ConfigError
from jwtfs.vault.backup import recover_index
from jwtfs.vault.layout import prepare_directories


def mount(args: argparse.Namespace) -> int:
    # The daemon logs; before it detaches, only problems are worth a line.
    setup_logging(args.verbose, quiet=not args.foreground)
    config = with_environment(load_config(), ipfs_api=args.ipfs_api)
    env_token = os.environ.get("JWTFS_TOKEN") or None
    key = None if args.key_fd is None else read_key_from(args.key_fd)
    request, warnings = check_mount_request(
        config, args.mountpoint, args.token_file, env_token, key=key
    )
    request = replace(request, allow_other=args.allow_other)
    for warning in warnings:
        print(f"jwtfs: warning: {warning}", file=sys.stderr)
    if args.foreground:
        return serve(request, args.ready_fd)
    argv = ["mount", str(request.mountpoint)]
    if request.token_file is not None:
        argv += ["--token-file", str(request.token_file)]
    if args.verbose:
        argv.append("--verbose")
    if args.ipfs_api is not None:
        argv += ["--ipfs-api", args.ipfs_api]
    if args.allow_other:
        argv.append("--allow-other")
    log_path = config.data_dir / "mount.log"
    start_background(argv, log_path, request.key)
    print(f"mounted {request.mountpoint} (log: {log_path})")
    return EXIT_OK


def umount(args: argparse.Namespace) -> int:
    unmount(args.mountpoint)
    return EXIT_OK


def flush(args: argparse.Namespace) -> int:
    timeout = _timeout_seconds(args.timeout)
    config = with_environment(load_config())
    target = find_target(config, args.mountpoint)
    if target.api is None:
        raise ConfigError(
            f"{target.why_no_node()}, so nothing is pinned; {target.how_to_add_node()}"
        )
    # Without a daemon this process pushes, and its pin queue would log the
    # node's state as well; the progress lines tell it already.
    logging.getLogger("jwtfs.vault.pins").setLevel(logging.ERROR)
    if args.wait:
        # The daemon learns of a node that hangs only when its push times
        # out; a waiting user is told at once. (One that cannot be reached
        # is found at once, and the progress lines say so.)
        answer, detail = probe_node(target.api, config.ipfs.authorization)
        if answer not in ("reachable", "unreachable"):
            print(f"jwtfs: the IPFS node is {answer}: {detail}", file=sys.stderr)
    progress = _FlushProgress(target.api, wait=args.wait)
    left = flush_backlog(
        config,
        mount=target.mount,
        wait=args.wait,
        timeout=timeout,
        progress=progress,
    )
    progress.end()
    if args.wait and left:
        verb = "waits" if left == 1 else "wait"
        print(
            f"jwtfs: {plural(left, 'version')} still {verb} to be pinned",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.wait and (failed := count_failed(config)):
        print(
            f"jwtfs: {plural(failed, 'version')} could not be pinned; "
            "'jwtfs status' says why",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _timeout_seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds, 0 or more.

    Raises:
        ConfigError: anything else, NaN and infinity too.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise ConfigError(
            f"--timeout {text}: give the seconds to wait, or 0 for no limit"
        )
    return value


class _FlushProgress:
    """What ``flush`` is waiting for: a line kept up to date on a terminal;
    elsewhere one line each time it starts waiting on an unreachable node."""

    def __init__(self, api: str, *, wait: bool) -> None:
        self.api = api
        self.wait = wait
        self.terminal = sys.stderr.isatty()
        self._told: int | None = None

    def __call__(self, backlog: Backlog) -> None:
        since = backlog.unreachable_since_ns
        node = ""
        if since is not None:
            node = f"; the IPFS node at {self.api} is unreachable since {iso(since)}"
        versions = plural(backlog.versions, "version")
        if self.terminal:
            line = f"{versions} ({human_size(backlog.bytes)}) to pin{node}"
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        elif self.wait and backlog.versions and since not in (None, self._told):
            self._told = since
            print(
                f"jwtfs: waiting for {versions} to be pinned{node}",
                file=sys.stderr,
                flush=True,
            )

    def end(self) -> None:
        if self.terminal:
            print(file=sys.stderr)


def recover(args: argparse.Namespace) -> int:
    config = with_environment(load_config(), ipfs_api=args.ipfs_api)
    key = open_master_key(config.master_key_file)
    client = pin_client(config)
    if client is None:
        raise ConfigError(
            f"{config.path}: no IPFS node configured to recover from; "
            "set ipfs.api or pass --ipfs-api URL"
        )
    prepare_directories(vault_paths(config))

    async def run() -> int:
        async with client:
            return await recover_index(
                key,
                client,
                Cid(normalize_cid(args.cid)),
                config.index_file,
                timeout=config.ipfs.fetch_timeout,
            )

    files = trio.run(run)
    print(f"recovered the index: {files} files, their content is fetched on read")
    return EXIT_OK
