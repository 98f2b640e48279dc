"""Parsing of config.toml settings that need no vault on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from jwtfs.config import IpfsConfig, is_loopback_url, parse_config
from jwtfs.errors import ConfigError

BASE = {"auth": {"audience": "jwtfs", "keys": ["signing.pub"]}}


def config_with(ipfs: dict[str, object]) -> IpfsConfig:
    return parse_config(Path("/v/config.toml"), {**BASE, "ipfs": ipfs}).ipfs


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:5001", True),
        ("http://127.8.9.10:5001", True),
        ("http://localhost:5001", True),
        ("http://[::1]:5001", True),
        ("https://ipfs.example.org", False),
        ("http://192.0.2.7:5001", False),
        ("http://[2001:db8::1]:5001", False),
    ],
)
def test_loopback_urls_are_told_from_others(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


@pytest.mark.parametrize(
    ("setting", "api", "uploads"),
    [
        (None, "http://127.0.0.1:5001", False),
        ("auto", "http://localhost:5001", False),
        ("auto", "https://ipfs.example.org", True),
        (True, "http://127.0.0.1:5001", True),
        (False, "https://ipfs.example.org", False),
        (True, "", False),
    ],
)
def test_upload_while_writing_resolves_auto_by_where_the_node_is(
    setting: object, api: str, uploads: bool
) -> None:
    table: dict[str, object] = {"api": api}
    if setting is not None:
        table["upload_while_writing"] = setting
    assert config_with(table).uploads_while_writing() is uploads


@pytest.mark.parametrize("setting", ["yes", 1, "", ["auto"]])
def test_a_bad_upload_while_writing_names_file_key_and_choices(setting: object) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with({"upload_while_writing": setting})
    assert str(caught.value) == (
        '/v/config.toml: ipfs.upload_while_writing must be true, false or "auto"'
    )


def parse(raw: dict[str, object]) -> object:
    return parse_config(Path("/v/config.toml"), raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {**BASE, "cache": {"max_bytes": 1}},
            "unknown key cache.max_bytes (known: max_size)",
        ),
        (
            {**BASE, "ipfs": {"fetch_timout": 5}},
            "unknown key ipfs.fetch_timout (known: api, authorization, "
            "fetch_timeout, timeout, upload_while_writing)",
        ),
        (
            {**BASE, "vault": {"datadir": "x"}},
            "unknown key vault.datadir (known: data_dir, master_key)",
        ),
        (
            {"auth": {**BASE["auth"], "leway": 5}},
            "unknown key auth.leway (known: audience, hmac_secret, issuer, issuers, "
            "jwks, keys, leeway, revocations, signing_key)",
        ),
        (
            {**BASE, "retention": {"keep": 2}},
            "unknown key retention.keep (known: keep_for, keep_versions)",
        ),
        (
            {**BASE, "backup": {"every": "1m"}},
            "unknown key backup.every (known: interval)",
        ),
        (
            {**BASE, "ipfs": {"api": "", "extra": {"x": 1}}},
            "unknown key ipfs.extra (known: api, authorization, "
            "fetch_timeout, timeout, upload_while_writing)",
        ),
        (
            {**BASE, "chache": {"max_size": 1}},
            "unknown table [chache] (known: auth, backup, cache, ipfs, retention, "
            "vault)",
        ),
        (
            {**BASE, "cache": {"max size\n": 1}},
            'unknown key cache."max size\\n" (known: max_size)',
        ),
        (
            {**BASE, "api": "http://127.0.0.1:5001"},
            "unknown key api (known tables: auth, backup, cache, ipfs, retention, "
            "vault)",
        ),
    ],
)
def test_an_unknown_table_or_key_names_file_key_and_what_is_known(
    raw: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert str(caught.value) == f"/v/config.toml: {message}"


def test_every_key_of_every_table_is_known() -> None:
    raw = {
        "vault": {"data_dir": "/d", "master_key": "master.key"},
        "auth": {
            "audience": "a",
            "issuers": ["i"],
            "leeway": 5,
            "keys": [],
            "jwks": "",
            "hmac_secret": "secret.bin",
            "revocations": "revoked.txt",
            "signing_key": "signing.key",
            "issuer": "i",
        },
        "ipfs": {
            "api": "",
            "authorization": "Basic eDp5",
            "timeout": 5,
            "fetch_timeout": 2.5,
            "upload_while_writing": "auto",
        },
        "retention": {"keep_versions": 3, "keep_for": "1h"},
        "cache": {"max_size": "1G"},
        "backup": {"interval": "5m"},
    }
    config = parse_config(Path("/v/config.toml"), raw)
    assert config.auth.leeway == 5
    assert config.ipfs.api is None
    assert config.ipfs.fetch_timeout == 2.5
    assert config.retention.keep_seconds == 3600
    assert config.cache.max_bytes == 1024**3
    assert config.backup.interval == 300
