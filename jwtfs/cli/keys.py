"""``jwtfs key``: wrap the master key in a passphrase, unwrap it, export it once."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from jwtfs.cli.codes import EXIT_OK
from jwtfs.config import load_config
from jwtfs.crypto.keys import generate_master_key
from jwtfs.crypto.wrapping import (
    open_master_key,
    parse_recovery_form,
    read_passphrase,
    recovery_form,
    write_plain,
    write_wrapped,
)
from jwtfs.errors import ConfigError


def key_wrap(args: argparse.Namespace) -> int:
    config = load_config()
    key = open_master_key(config.master_key_file)
    passphrase = read_passphrase("new passphrase: ")
    if sys.stdin.isatty() and read_passphrase("again: ") != passphrase:
        raise ConfigError("the two passphrases differ; nothing changed")
    if not passphrase:
        raise ConfigError("an empty passphrase protects nothing; nothing changed")
    write_wrapped(config.master_key_file, key, passphrase)
    print(f"{config.master_key_file}: wrapped; mounting now needs the passphrase")
    return EXIT_OK


def key_unwrap(args: argparse.Namespace) -> int:
    config = load_config()
    key = open_master_key(config.master_key_file)
    write_plain(config.master_key_file, key)
    print(f"{config.master_key_file}: stored without a passphrase (mode 0600)")
    return EXIT_OK


def key_export(args: argparse.Namespace) -> int:
    config = load_config()
    if not sys.stdout.isatty():
        raise ConfigError(
            "key export prints the master key to a terminal only; run it on one, "
            "without redirecting its output"
        )
    marker = config.master_key_file.with_name(config.master_key_file.name + ".exported")
    if marker.exists() and not args.again:
        raise ConfigError(
            f"the master key was exported already ({marker.read_text().strip()}); "
            "pass --again to show it once more"
        )
    key = open_master_key(config.master_key_file)
    print("Write this down and keep it apart from your machine. With it and one")
    print("snapshot CID, 'jwtfs key import' and 'jwtfs recover' bring the vault back.")
    print()
    print("    " + recovery_form(key))
    print()
    marker.write_text(f"exported {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")
    marker.chmod(0o600)
    return EXIT_OK


def key_import(args: argparse.Namespace) -> int:
    config = load_config()
    path = config.master_key_file
    if path.exists():
        raise ConfigError(f"{path}: a master key exists already; move it away first")
    text = input("recovery form: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = parse_recovery_form(text)
    generate_master_key(path)
    write_plain(path, key)
    print(f"{path}: master key {key.fingerprint()} restored")
    return EXIT_OK
