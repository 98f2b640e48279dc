"""Parsing of config.toml settings that need no vault on disk."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from jwtfs.config import (
    KEYS,
    Config,
    IpfsConfig,
    is_loopback_url,
    parse_config,
    with_environment,
)
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


FILE = "/v/config.toml"
URL_FIX = 'write it like http://127.0.0.1:5001, or "none" for no node'


def refusal(raw: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    message = str(caught.value)
    assert "\n" not in message
    return message


# (url, what is wrong with it), as said after the name of the setting.
BAD_URLS = [
    ("http://127.0.0.1:99999", "has a bad port '99999'; a port is 1 to 65535"),
    ("http://127.0.0.1:0", "has a bad port '0'; a port is 1 to 65535"),
    ("http://127.0.0.1:notaport", "has a bad port 'notaport'; a port is 1 to 65535"),
    ("http://127.0.0.1:", "has a bad port ''; a port is 1 to 65535"),
    ("http://127.0.0.1:+5", "has a bad port '+5'; a port is 1 to 65535"),
    ("http://[::1]:70000", "has a bad port '70000'; a port is 1 to 65535"),
    ("not a url", f"holds a space, control or non-ASCII character; {URL_FIX}"),
    ("garbage", f"must be an http:// or https:// URL; {URL_FIX}"),
    ("127.0.0.1:5001", f"must be an http:// or https:// URL; {URL_FIX}"),
    ("ftp://127.0.0.1:5001", f"must be an http:// or https:// URL; {URL_FIX}"),
    ("http:127.0.0.1:5001", f"has no host; {URL_FIX}"),
    ("http://", f"has no host; {URL_FIX}"),
    ("http://:5001", f"has no host; {URL_FIX}"),
    (
        "http://127.0.0.1:50\n01",
        f"holds a space, control or non-ASCII character; {URL_FIX}",
    ),
    (
        "http://nœud.example",
        f"holds a space, control or non-ASCII character; {URL_FIX}",
    ),
    ("http://999.1.1.1:5001", f"has a bad host '999.1.1.1'; {URL_FIX}"),
    ("http://127.1:5001", f"has a bad host '127.1'; {URL_FIX}"),
    ("http://-node.example:5001", f"has a bad host '-node.example'; {URL_FIX}"),
    ("http://[fe80::1%25eth0]:5001", f"has a bad host 'fe80::1%25eth0'; {URL_FIX}"),
    ("http://[::1:5001", f"is not a valid URL; {URL_FIX}"),
    ("http://[::1]x:5001", f"is not a valid URL; {URL_FIX}"),
    ("http://127.0.0.1:5001?x=1", f"must not have a query or fragment; {URL_FIX}"),
    ("http://127.0.0.1:5001/#top", f"must not have a query or fragment; {URL_FIX}"),
    (
        "http://user:s3cret@127.0.0.1:5001",
        "must not hold credentials; put them in ipfs.authorization or "
        "IPFS_API_AUTHORIZATION",
    ),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_bad_ipfs_api_url_is_refused_when_parsed(url: str, problem: str) -> None:
    message = refusal({**BASE, "ipfs": {"api": url}})
    assert message == f"{FILE}: ipfs.api {problem}"
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
        (" http://127.0.0.1:5001/ ", "http://127.0.0.1:5001/"),
        ("HTTP://LOCALHOST:5001", "HTTP://LOCALHOST:5001"),
        ("https://ipfs.example.org", "https://ipfs.example.org"),
        ("http://[::1]:1", "http://[::1]:1"),
        ("http://node_1.example:65535", "http://node_1.example:65535"),
        ("https://proxy.example/ipfs/api/v0", "https://proxy.example/ipfs/api/v0"),
        ("none", None),
        ("None", None),
        ("", None),
        ("  ", None),
    ],
)
def test_a_good_ipfs_api_url_is_kept(url: str, expected: str | None) -> None:
    assert config_with({"api": url}).api == expected


@pytest.mark.parametrize("key", ["timeout", "fetch_timeout"])
@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, math.nan, 0, -1, 0.0, 86400.5, 10**30, True, "30"]
)
def test_a_timeout_must_be_finite_positive_seconds(key: str, value: object) -> None:
    message = refusal({**BASE, "ipfs": {key: value}})
    assert message == (
        f"{FILE}: ipfs.{key} must be a number of seconds greater than 0 and at "
        "most 86400"
    )


@pytest.mark.parametrize("value", [0.001, 1, 30, 86400])
def test_a_timeout_in_range_is_kept(value: float) -> None:
    ipfs = config_with({"timeout": value, "fetch_timeout": value})
    assert (ipfs.timeout, ipfs.fetch_timeout) == (value, value)


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("retention", "keep_for", "3651d"),
        ("retention", "keep_for", "999999999999w"),
        ("retention", "keep_for", 10**400),
        ("retention", "keep_for", -1),
        ("retention", "keep_for", math.inf),
        ("retention", "keep_for", "nan"),
        ("backup", "interval", 315360001),
        ("backup", "interval", 10**30),
        ("backup", "interval", math.nan),
        ("backup", "interval", "-5m"),
    ],
)
def test_a_duration_must_be_at_most_ten_years(
    table: str, key: str, value: object
) -> None:
    message = refusal({**BASE, table: {key: value}})
    assert message == (
        f"{FILE}: {table}.{key} must be seconds or a duration like 10m, 8h, 30d, "
        "at most 3650d"
    )


def test_durations_up_to_ten_years_are_kept() -> None:
    config = parse(
        {**BASE, "retention": {"keep_for": "3650d"}, "backup": {"interval": 0}}
    )
    assert isinstance(config, Config)
    assert (config.retention.keep_seconds, config.backup.interval) == (315360000, 0)


@pytest.mark.parametrize(
    ("table", "key", "value", "rule"),
    [
        ("auth", "leeway", -1, "from 0 to 86400"),
        ("auth", "leeway", 86401, "from 0 to 86400"),
        ("auth", "leeway", 10**400, "from 0 to 86400"),
        ("auth", "leeway", 1.5, "from 0 to 86400"),
        ("retention", "keep_versions", -1, ">= 0"),
        ("retention", "keep_versions", math.inf, ">= 0"),
    ],
)
def test_an_integer_setting_must_be_in_its_range(
    table: str, key: str, value: object, rule: str
) -> None:
    raw: dict[str, object] = {**BASE, table: {key: value}}
    if table == "auth":
        raw = {"auth": {**BASE["auth"], key: value}}
    assert refusal(raw) == f"{FILE}: {table}.{key} must be an integer {rule}"


@pytest.mark.parametrize("value", ["Bearer é", "Basic a\nb", "Basic a\x00", "a\tb"])
def test_authorization_must_be_printable_ascii(value: str) -> None:
    message = refusal({**BASE, "ipfs": {"authorization": value}})
    assert message == (
        f"{FILE}: ipfs.authorization must be printable ASCII, as an HTTP header is"
    )


@pytest.mark.parametrize(
    ("table", "key", "value", "problem"),
    [
        ("vault", "master_key", "", "must name a file (default: master.key)"),
        ("vault", "master_key", "master\x00.key", "must not hold a NUL character"),
        ("vault", "data_dir", "/data\x00", "must not hold a NUL character"),
        ("auth", "keys", ["a.pub", "b\x00.pub"], "must not hold a NUL character"),
        ("auth", "revocations", "\x00", "must not hold a NUL character"),
    ],
)
def test_a_file_setting_must_be_a_usable_path(
    table: str, key: str, value: object, problem: str
) -> None:
    raw: dict[str, object] = {**BASE, table: {key: value}}
    if table == "auth":
        raw = {"auth": {**BASE["auth"], key: value}}
    assert refusal(raw) == f"{FILE}: {table}.{key} {problem}"


def with_env(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], option: str | None = None
) -> IpfsConfig:
    for name in ("IPFS_API", "IPFS_API_AUTHORIZATION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = parse_config(Path(FILE), BASE)
    return with_environment(config, ipfs_api=option).ipfs


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_ipfs_api_from_the_environment_is_checked_alike(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        with_env(monkeypatch, {"IPFS_API": url})
    assert str(caught.value) == f"IPFS_API {problem}"


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_ipfs_api_option_is_checked_alike(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        with_env(monkeypatch, {}, option=url)
    assert str(caught.value) == f"--ipfs-api {problem}"


def test_the_option_wins_over_the_environment_over_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"IPFS_API": "http://127.0.0.1:2"}
    assert with_env(monkeypatch, {}).api == "http://127.0.0.1:5001"
    assert with_env(monkeypatch, env).api == "http://127.0.0.1:2"
    assert with_env(monkeypatch, env, "http://[::1]:3").api == "http://[::1]:3"
    assert with_env(monkeypatch, env, "none").api is None


def test_authorization_from_the_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError) as caught:
        with_env(monkeypatch, {"IPFS_API_AUTHORIZATION": "Bearer \x1b[2J"})
    assert str(caught.value) == (
        "IPFS_API_AUTHORIZATION must be printable ASCII, as an HTTP header is"
    )


REPO = Path(__file__).resolve().parents[2]
# `ipfs.api`, `auth.jwks = "keys.json"`, `[cache] max_size`
DOCUMENTED_KEY = re.compile(
    r"`\[?(vault|auth|ipfs|retention|cache|backup)(?:\] +|\.)([a-z_]+)\b"
)


def test_the_documented_keys_are_the_known_keys() -> None:
    readme = (REPO / "README.md").read_text()
    docs = [readme] + [p.read_text() for p in sorted((REPO / "docs").glob("*.md"))]
    documented = {m.groups() for text in docs for m in DOCUMENTED_KEY.finditer(text)}
    known = {(table, key) for table, keys in KEYS.items() for key in keys}
    assert documented - known == set()
    in_readme = {m.groups() for m in DOCUMENTED_KEY.finditer(readme)}
    assert known - in_readme == set()
