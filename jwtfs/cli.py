"""The ``jwtfs`` command: argument parsing, exit codes, human and JSON output.

Exit codes: 0 success, 1 failure at run time, 2 a user's mistake (bad
arguments, config, key or token file), each reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from jwtfs import __version__
from jwtfs.auth.tokens import (
    TokenReport,
    Verifier,
    inspect_token,
    issue_token,
    parse_duration,
)
from jwtfs.blocks.store import BlockStore
from jwtfs.config import CONFIG_NAME, Config, config_dir, default_data_dir, load_config
from jwtfs.crypto.keys import generate_master_key
from jwtfs.crypto.signing import generate_signing_key, load_private_pem
from jwtfs.daemon import (
    check_mount_request,
    serve,
    setup_logging,
    start_background,
    unmount,
)
from jwtfs.errors import ConfigError, JwtfsError
from jwtfs.vault.index import Index
from jwtfs.vault.vault import Paths, initialize

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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

    init = commands.add_parser("init", help="create keys, config and an empty vault")
    init.add_argument("--force", action="store_true", help="replace an existing vault")
    init.add_argument("--data-dir", type=Path, help="where the index and store live")
    init.set_defaults(func=_init)

    token = commands.add_parser("token", help="issue or inspect access tokens")
    token_commands = token.add_subparsers(required=True, metavar="ACTION")
    issue = token_commands.add_parser("issue", help="print a signed token")
    issue.add_argument("--read", action="append", default=[], metavar="PATTERN")
    issue.add_argument("--write", action="append", default=[], metavar="PATTERN")
    issue.add_argument("--ttl", default="8h", help="lifetime, e.g. 90s, 8h, 30d")
    issue.add_argument("--sub", help="who the token is for")
    issue.set_defaults(func=_token_issue)
    inspect = token_commands.add_parser("inspect", help="explain a token")
    inspect.add_argument(
        "file", nargs="?", default="-", help="token file, or - for stdin"
    )
    inspect.set_defaults(func=_token_inspect)

    mount = commands.add_parser("mount", help="mount the vault")
    mount.add_argument("mountpoint", type=Path)
    mount.add_argument("--token-file", type=Path)
    mount.add_argument("--foreground", action="store_true", help="do not detach")
    mount.add_argument("--verbose", "-v", action="store_true", help="log every request")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(func=_mount)

    umount = commands.add_parser("umount", help="commit and unmount")
    umount.add_argument("mountpoint", type=Path)
    umount.set_defaults(func=_umount)

    index = commands.add_parser("index", help="list stored files and their CIDs")
    index.add_argument("--json", action="store_true")
    index.add_argument("path", nargs="?", default="/", help="a path inside the vault")
    index.set_defaults(func=_index)

    status = commands.add_parser("status", help="the vault, its store and its node")
    status.add_argument("--json", action="store_true")
    status.add_argument("mountpoint", nargs="?", type=Path)
    status.set_defaults(func=_status)
    return parser


# init


def _init(args: argparse.Namespace) -> int:
    directory = config_dir()
    config_path = directory / CONFIG_NAME
    data_dir = (args.data_dir or default_data_dir()).expanduser().absolute()
    if config_path.exists() and not args.force:
        raise ConfigError(
            f"{config_path}: a vault exists already; use --force to replace it "
            "(its files become unreadable)"
        )
    if args.force:
        _remove_vault(directory, data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    generate_master_key(directory / "master.key")
    generate_signing_key(directory / "signing.key", directory / "signing.pub")
    paths = Paths(
        index=data_dir / "index.sqlite3",
        store=data_dir / "store",
        staging=data_dir / "staging",
    )
    vault_id = initialize(paths, uid=os.getuid(), gid=os.getgid())
    config_path.write_text(_config_text(vault_id, data_dir), encoding="utf-8")
    config_path.chmod(0o600)
    print(f"created vault {vault_id}")
    print(f"  config and keys: {directory}")
    print(f"  index and store: {data_dir}")
    print("next:")
    print("  jwtfs token issue --read '/**' --write '/**' --ttl 30d > vault.jwt")
    print("  mkdir -p ~/vault && jwtfs mount ~/vault --token-file vault.jwt")
    return EXIT_OK


def _remove_vault(directory: Path, data_dir: Path) -> None:
    for name in ("master.key", "signing.key", "signing.pub", CONFIG_NAME):
        (directory / name).unlink(missing_ok=True)
    for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        (data_dir / name).unlink(missing_ok=True)
    for name in ("store", "staging"):
        shutil.rmtree(data_dir / name, ignore_errors=True)


def _config_text(vault_id: str, data_dir: Path) -> str:
    return f"""\
# jwtfs vault settings. Paths are relative to this directory.

[vault]
data_dir = {json.dumps(str(data_dir))}
master_key = "master.key"

[auth]
# Tokens must name this audience in their "aud" claim.
audience = "jwtfs:{vault_id}"
# Public keys that verify tokens (PEM, DER or OpenSSH); or jwks = "keys.json".
keys = ["signing.pub"]
# The private key 'jwtfs token issue' signs with.
signing_key = "signing.key"
# Seconds of clock skew allowed for exp, nbf and iat.
leeway = 30
# A file of revoked token ids (jti), one per line.
# revocations = "revoked.txt"

[ipfs]
api = "http://127.0.0.1:5001"
"""


# token


def _signing_key(config: Config) -> bytes:
    path = config.auth.signing_key_file
    if path is None:
        raise ConfigError(
            f"{config.path}: auth.signing_key is not set; name a private key"
        )
    return load_private_pem(path)


def _token_issue(args: argparse.Namespace) -> int:
    config = load_config()
    if not args.read and not args.write:
        raise ConfigError("token issue: give at least one --read or --write pattern")
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as err:
        raise ConfigError(f"--ttl: {err}") from err
    token = issue_token(
        _signing_key(config),
        audience=config.auth.audience,
        read=args.read,
        write=args.write,
        ttl_seconds=ttl,
        sub=args.sub,
        issuer=config.auth.issuer,
    )
    print(token)
    return EXIT_OK


def _token_inspect(args: argparse.Namespace) -> int:
    config = load_config()
    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise ConfigError(f"{args.file}: cannot read ({err.strerror})") from err
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]
    if not lines:
        raise ConfigError(f"{args.file}: no token in it")
    verifier = Verifier(config.auth)
    all_valid = True
    for number, line in enumerate(lines, 1):
        report = inspect_token(line, verifier)
        if len(lines) > 1:
            print(f"token {number}:")
        for label, value in _report_rows(report):
            print(f"  {label:<9} {value}")
        all_valid &= report.valid
    return EXIT_OK if all_valid else EXIT_FAILURE


def _report_rows(report: TokenReport) -> list[tuple[str, str]]:
    verdict = "yes" if report.valid else f"no: {report.reason}"
    rows = [
        ("valid", verdict),
        ("subject", report.sub or "-"),
        ("audience", ", ".join(report.aud) or "-"),
        ("issuer", report.iss or "-"),
        ("issued", report.iat or "-"),
        ("from", report.nbf or "-"),
        ("expires", report.exp or "-"),
        ("id", report.jti or "-"),
        ("algorithm", report.alg or "-"),
        ("grants", "; ".join(report.grants_in_words) or "nothing"),
    ]
    rows += [("ignored", reason) for reason in report.rejected_scopes]
    return rows


# mount, umount


def _mount(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    config = load_config()
    env_token = os.environ.get("JWTFS_TOKEN") or None
    request, warnings = check_mount_request(
        config, args.mountpoint, args.token_file, env_token
    )
    for warning in warnings:
        print(f"jwtfs: warning: {warning}", file=sys.stderr)
    if args.foreground:
        return serve(request, args.ready_fd)
    argv = ["mount", str(request.mountpoint)]
    if request.token_file is not None:
        argv += ["--token-file", str(request.token_file)]
    if args.verbose:
        argv.append("--verbose")
    log_path = config.data_dir / "mount.log"
    start_background(argv, log_path)
    print(f"mounted {request.mountpoint} (log: {log_path})")
    return EXIT_OK


def _umount(args: argparse.Namespace) -> int:
    unmount(args.mountpoint)
    return EXIT_OK


# index, status


def show_path(path: bytes) -> str:
    """A path for a terminal: undecodable bytes and control characters escaped."""
    text = path.decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _open_index(config: Config) -> Index:
    if not config.index_file.exists():
        raise ConfigError(f"{config.index_file}: no index; run 'jwtfs init'")
    return Index(config.index_file, readonly=True)


def _index(args: argparse.Namespace) -> int:
    config = load_config()
    prefix = os.fsencode(args.path).rstrip(b"/")
    index = _open_index(config)
    rows = []
    try:
        for path, inode in index.walk():
            if prefix and path != prefix and not path.startswith(prefix + b"/"):
                continue
            row = index.get_inode(inode)
            if row is None or not row.is_reg:
                continue
            version = None if row.version is None else index.get_version(row.version)
            rows.append(
                {
                    "path": show_path(path),
                    "size": row.size,
                    "cid": version.cid if version else None,
                    "state": version.state if version else "empty",
                }
            )
    finally:
        index.close()
    rows.sort(key=lambda r: str(r["path"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for r in rows:
        print(f"{r['state']:<8} {r['size']:>12}  {r['cid'] or '-':<60}  {r['path']}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    config = load_config()
    index = _open_index(config)
    try:
        counts = index.version_counts()
        inodes = index.count_inodes()
        vault_id = index.meta("vault_id")
        integrity = index.integrity_check()
    finally:
        index.close()
    usage = BlockStore(config.store_dir).usage()
    versions = sum(counts.values())
    local_only = counts.get("local", 0) == versions
    report = {
        "vault_id": vault_id,
        "config": str(config.path),
        "data_dir": str(config.data_dir),
        "inodes": inodes,
        "versions": counts,
        "store": {"streams": usage.streams, "bytes": usage.bytes},
        "index_integrity": integrity,
        "ipfs_api": config.ipfs.api,
        "left_machine": not local_only,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"vault      {vault_id}")
    print(f"config     {config.path}")
    print(f"data       {config.data_dir}")
    print(f"files      {versions} stored, {inodes} inodes in the index ({integrity})")
    print(f"store      {usage.streams} streams, {_human(usage.bytes)} on disk")
    if local_only:
        print(
            "network    nothing has left this machine: every version is in the "
            "embedded store only"
        )
    else:
        print(
            f"network    {versions - counts.get('local', 0)} versions pushed or queued"
        )
    return EXIT_OK


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
