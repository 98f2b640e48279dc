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
