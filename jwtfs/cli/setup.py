"""``jwtfs init`` and ``jwtfs token``: keys, config, an empty vault; issuing tokens."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from jwtfs.auth.issuing import (
    TokenReport,
    inspect_token,
    issue_token,
    parse_duration,
)
from jwtfs.auth.tokens import Verifier
from jwtfs.cli.codes import EXIT_FAILURE, EXIT_OK
from jwtfs.config import CONFIG_NAME, Config, config_dir, default_data_dir, load_config
from jwtfs.crypto.keys import generate_master_key
from jwtfs.crypto.signing import generate_signing_key, load_private_pem
from jwtfs.errors import ConfigError
from jwtfs.vault.layout import Paths, initialize


def init(args: argparse.Namespace) -> int:
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
    key = generate_master_key(directory / "master.key")
    generate_signing_key(directory / "signing.key", directory / "signing.pub")
    paths = Paths(
        index=data_dir / "index.sqlite3",
        store=data_dir / "store",
        staging=data_dir / "staging",
    )
    vault_id = initialize(
        paths, uid=os.getuid(), gid=os.getgid(), key_fingerprint=key.fingerprint()
    )
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
# jwtfs vault settings. Paths are relative to this directory. A commented-out
# setting shows its default or an example; a key jwtfs does not know is refused.

[vault]
data_dir = {json.dumps(str(data_dir))}
master_key = "master.key"

[auth]
# Tokens must name this audience in their "aud" claim.
audience = "jwtfs:{vault_id}"
# Public keys that verify tokens (PEM, DER or OpenSSH), and/or a JWKS file;
# or, instead of both, a secret for HS256.
keys = ["signing.pub"]
# jwks = "keys.json"
# hmac_secret = "hmac.key"
# The private key 'jwtfs token issue' signs with, and the "iss" it sets.
signing_key = "signing.key"
# issuer = "https://issuer.example"
# When set, tokens must carry one of these in "iss".
# issuers = ["https://issuer.example"]
# Seconds of clock skew allowed for exp, nbf and iat (0 to 86400).
leeway = 30
# A file of revoked token ids (jti), one per line.
# revocations = "revoked.txt"

[ipfs]
# The node to pin to: http(s)://HOST:PORT, or "none" for no node.
api = "http://127.0.0.1:5001"
# The Authorization header the node's API.Authorizations expects.
# authorization = "Basic ..."
# Seconds a request to the node may take, and a read of evicted content.
# timeout = 60
# fetch_timeout = 30
# Upload a file while it is written front to back: true, false or "auto".
# upload_while_writing = "auto"

[retention]
# Superseded versions of a file kept pinned, and for how long at least.
# keep_versions = 1
# keep_for = "10m"

[cache]
# Local copies of pinned content beyond this size may be evicted (0: never).
# max_size = 0

[backup]
# An index snapshot is pinned at most this often, after changes.
# interval = "1m"
"""


# token


def _signing_key(config: Config) -> bytes:
    path = config.auth.signing_key_file
    if path is None:
        raise ConfigError(
            f"{config.path}: auth.signing_key is not set; name a private key"
        )
    return load_private_pem(path)


def token_issue(args: argparse.Namespace) -> int:
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


def token_inspect(args: argparse.Namespace) -> int:
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
