"""The ``jwtfs`` command: argument parsing, exit codes, human and JSON output.

Exit codes: 0 success, 1 failure at run time, 2 a user's mistake (bad
arguments, config, key or token file), each reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jwtfs import __version__
from jwtfs.cli.codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from jwtfs.cli.keys import key_export, key_import, key_unwrap, key_wrap
from jwtfs.cli.mounts import flush, mount, recover, umount
from jwtfs.cli.repair import fsck
from jwtfs.cli.reports import export, index, status
from jwtfs.cli.setup import init, token_inspect, token_issue
from jwtfs.errors import ConfigError, JwtfsError


def run() -> None:
    """Entry point of the console script."""
    try:
        code = main(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``jwtfs index | head``): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    sys.exit(code)


def main(argv: Sequence[str]) -> int:
    """Run one ``jwtfs`` command and return its exit code."""
    args = _parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as err:
        print(f"jwtfs: {err}", file=sys.stderr)
        return EXIT_USAGE
    except JwtfsError as err:
        print(f"jwtfs: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jwtfs", description="An encrypted, token-gated filesystem on IPFS."
    )
    parser.add_argument("--version", action="version", version=f"jwtfs {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    p_init = commands.add_parser("init", help="create keys, config and an empty vault")
    p_init.add_argument(
        "--force", action="store_true", help="replace an existing vault"
    )
    p_init.add_argument("--data-dir", type=Path, help="where the index and store live")
    p_init.set_defaults(func=init)

    p_token = commands.add_parser("token", help="issue or inspect access tokens")
    token_commands = p_token.add_subparsers(required=True, metavar="ACTION")
    p_issue = token_commands.add_parser("issue", help="print a signed token")
    p_issue.add_argument("--read", action="append", default=[], metavar="PATTERN")
    p_issue.add_argument("--write", action="append", default=[], metavar="PATTERN")
    p_issue.add_argument("--ttl", default="8h", help="lifetime, e.g. 90s, 8h, 30d")
    p_issue.add_argument("--sub", help="who the token is for")
    p_issue.set_defaults(func=token_issue)
    p_inspect = token_commands.add_parser("inspect", help="explain a token")
    p_inspect.add_argument(
        "file", nargs="?", default="-", help="token file, or - for stdin"
    )
    p_inspect.set_defaults(func=token_inspect)

    p_mount = commands.add_parser("mount", help="mount the vault")
    p_mount.add_argument("mountpoint", type=Path)
    p_mount.add_argument("--token-file", type=Path)
    p_mount.add_argument("--foreground", action="store_true", help="do not detach")
    p_mount.add_argument(
        "--verbose", "-v", action="store_true", help="log every request"
    )
    p_mount.add_argument(
        "--ipfs-api", metavar="URL", help="pin to this node ('none': no node)"
    )
    p_mount.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users reach the mount (they get only its root's attributes)",
    )
    p_mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p_mount.add_argument("--key-fd", type=int, help=argparse.SUPPRESS)
    p_mount.set_defaults(func=mount)

    p_umount = commands.add_parser("umount", help="commit and unmount")
    p_umount.add_argument("mountpoint", type=Path)
    p_umount.set_defaults(func=umount)

    p_index = commands.add_parser("index", help="list stored files and their CIDs")
    p_index.add_argument("--json", action="store_true")
    p_index.add_argument("path", nargs="?", default="/", help="a path inside the vault")
    p_index.set_defaults(func=index)

    p_flush = commands.add_parser("flush", help="push queued versions to the node now")
    p_flush.add_argument(
        "--wait", action="store_true", help="return once nothing is queued"
    )
    p_flush.add_argument(
        "--timeout",
        default="0",
        metavar="SECONDS",
        help="give up after this many seconds (default 0: no limit)",
    )
    p_flush.add_argument(
        "mountpoint", nargs="?", type=Path, help="the vault's mount (default: any)"
    )
    p_flush.set_defaults(func=flush)

    p_export = commands.add_parser(
        "export", help="write a file's DAG as a CAR to stdout"
    )
    p_export.add_argument(
        "--car", required=True, metavar="PATH", help="a path in the vault"
    )
    p_export.set_defaults(func=export)

    p_key = commands.add_parser(
        "key", help="wrap, unwrap, export or import the master key"
    )
    key_commands = p_key.add_subparsers(required=True, metavar="ACTION")
    key_commands.add_parser("wrap", help="protect it with a passphrase").set_defaults(
        func=key_wrap
    )
    key_commands.add_parser("unwrap", help="store it without one").set_defaults(
        func=key_unwrap
    )
    p_export_key = key_commands.add_parser(
        "export", help="print it once, on a terminal"
    )
    p_export_key.add_argument("--again", action="store_true", help="print it once more")
    p_export_key.set_defaults(func=key_export)
    key_commands.add_parser(
        "import", help="restore it from its printed form"
    ).set_defaults(func=key_import)

    p_recover = commands.add_parser(
        "recover", help="rebuild the index from a pinned snapshot"
    )
    p_recover.add_argument("cid", help="the snapshot CID 'jwtfs status' showed")
    p_recover.add_argument("--ipfs-api", metavar="URL", help="the node to fetch from")
    p_recover.set_defaults(func=recover)

    p_status = commands.add_parser("status", help="the vault, its store and its node")
    p_status.add_argument("--json", action="store_true")
    p_status.add_argument(
        "mountpoint", nargs="?", type=Path, help="the vault's mount (default: any)"
    )
    p_status.set_defaults(func=status)

    p_fsck = commands.add_parser("fsck", help="check the unmounted vault and repair")
    p_fsck.add_argument(
        "--repair",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="repair what is safe to repair (default); --no-repair only reports",
    )
    p_fsck.add_argument("--json", action="store_true")
    p_fsck.set_defaults(func=fsck)
    return parser
