"""config.toml through the real ``jwtfs`` command.

Every command that reads the config refuses a bad one with exit code 2 and
one line naming the file and the key, and changes nothing: no file of the
vault, no mount. What ``jwtfs init`` writes, commented-out defaults included,
is accepted.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from jwtfs.config import KEYS, parse_config
from tests.harness import VaultHarness, one_line_error, tree_state
from tests.ipfs.fakes import closed_loopback_port


def commands(h: VaultHarness) -> list[tuple[str, ...]]:
    """Every command that reads config.toml, with arguments that would work."""
    token = str(h.token_file)
    return [
        ("mount", str(h.mnt), "--token-file", token),
        ("index",),
        ("status",),
        ("flush",),
        ("fsck", "--no-repair"),
        ("export", "--car", "/f"),
        ("token", "issue", "--read", "/**"),
        ("token", "inspect", token),
        ("key", "export"),
        ("key", "wrap"),
    ]


def refused_everywhere(
    h: VaultHarness, *names: str, fix: bool = False, env: dict[str, str] | None = None
) -> None:
    before = tree_state(h.config_dir, h.data_dir)
    for args in commands(h):
        result = h.jwtfs(*args, check=False, env=env, input="")
        one_line_error(result, *names, fix=fix)
        assert result.stdout == "", args
        assert not h.attached(), args
        assert tree_state(h.config_dir, h.data_dir) == before, args


@pytest.fixture
def vault_with_token(fresh_vault: VaultHarness) -> VaultHarness:
    fresh_vault.set_token(fresh_vault.issue(read=("/**",), write=("/**",)))
    return fresh_vault


def test_a_misspelt_key_is_refused_by_every_command(
    vault_with_token: VaultHarness,
) -> None:
    h = vault_with_token
    h.set_config("ipfs", "fetch_timout", 5)
    refused_everywhere(h, str(h.config_dir / "config.toml"), "ipfs.fetch_timout")


@pytest.mark.parametrize(
    ("table", "key", "named"),
    [
        ("cache", "max_bytes", "unknown key cache.max_bytes (known: max_size)"),
        ("chache", "max_size", "unknown table [chache]"),
        ("vault", "datadir", "unknown key vault.datadir"),
        ("auth", "leway", "unknown key auth.leway"),
        ("retention", "keep", "unknown key retention.keep"),
        ("backup", "every", "unknown key backup.every"),
    ],
)
def test_an_unknown_table_or_key_stops_the_mount(
    vault_with_token: VaultHarness, table: str, key: str, named: str
) -> None:
    h = vault_with_token
    h.set_config(table, key, 1)
    before = tree_state(h.config_dir, h.data_dir)
    result = h.jwtfs(
        "mount", str(h.mnt), "--token-file", str(h.token_file), check=False
    )
    line = one_line_error(result, fix=False)
    assert line.startswith(f"jwtfs: {h.config_dir / 'config.toml'}: {named}")
    assert not h.attached()
    assert tree_state(h.config_dir, h.data_dir) == before


def test_the_config_init_writes_is_accepted(vault_with_token: VaultHarness) -> None:
    h = vault_with_token
    h.mount()
    (h.mnt / "f").write_text("kept\n")
    h.umount()
    assert "/f" in h.jwtfs("index").stdout


def test_a_bad_ipfs_api_is_refused_by_every_command(
    vault_with_token: VaultHarness,
) -> None:
    h = vault_with_token
    h.set_config("ipfs", "api", "http://127.0.0.1:99999")
    config = str(h.config_dir / "config.toml")
    refused_everywhere(h, config, "ipfs.api", "port '99999'", fix=True)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("api", '"not a url"'),
        ("api", '"ftp://127.0.0.1:5001"'),
        ("api", '"http://127.0.0.1:notaport"'),
        ("api", '"garbage"'),
        ("timeout", "inf"),
        ("timeout", "1e400"),
        ("timeout", "nan"),
        ("timeout", "0"),
        ("fetch_timeout", "inf"),
        ("fetch_timeout", "1e400"),
        ("fetch_timeout", "nan"),
        ("fetch_timeout", "-1"),
        ("authorization", '"Bearer \\u00e9"'),
    ],
)
def test_a_bad_ipfs_setting_stops_the_mount(
    vault_with_token: VaultHarness, key: str, value: str
) -> None:
    h = vault_with_token
    h.set_config("ipfs", key, value, raw=True)
    before = tree_state(h.config_dir, h.data_dir)
    result = h.jwtfs(
        "mount", str(h.mnt), "--token-file", str(h.token_file), check=False
    )
    line = one_line_error(result, fix=key == "api")
    assert line.startswith(f"jwtfs: {h.config_dir / 'config.toml'}: ipfs.{key} ")
    assert not h.attached()
    assert tree_state(h.config_dir, h.data_dir) == before


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("auth", "leeway", "1e400"),
        ("auth", "leeway", "100000"),
        ("retention", "keep_for", '"999999999999w"'),
        ("retention", "keep_versions", "-1"),
        ("backup", "interval", "inf"),
        ("backup", "interval", "1" + "0" * 30),
        ("cache", "max_size", "nan"),
    ],
)
def test_a_bad_number_elsewhere_stops_the_mount(
    vault_with_token: VaultHarness, table: str, key: str, value: str
) -> None:
    h = vault_with_token
    h.set_config(table, key, value, raw=True)
    result = h.jwtfs(
        "mount", str(h.mnt), "--token-file", str(h.token_file), check=False
    )
    line = one_line_error(result, fix=False)
    assert line.startswith(f"jwtfs: {h.config_dir / 'config.toml'}: {table}.{key} ")
    assert not h.attached()


def test_a_bad_ipfs_api_variable_is_refused_by_commands_that_use_it(
    vault_with_token: VaultHarness,
) -> None:
    h = vault_with_token
    before = tree_state(h.config_dir, h.data_dir)
    for args in [
        ("mount", str(h.mnt), "--token-file", str(h.token_file)),
        ("status",),
        ("flush",),
        ("fsck", "--no-repair"),
        ("recover", "bafkqaaa"),
    ]:
        for url in ("garbage", "http://127.0.0.1:99999", "http://[::1]:0"):
            result = h.jwtfs(*args, check=False, env={"IPFS_API": url})
            line = one_line_error(result)
            assert line.startswith("jwtfs: IPFS_API "), args
            assert not h.attached()
    assert tree_state(h.config_dir, h.data_dir) == before


def test_a_bad_ipfs_api_option_is_refused_before_mounting(
    vault_with_token: VaultHarness,
) -> None:
    h = vault_with_token
    before = tree_state(h.config_dir, h.data_dir)
    for url in ("garbage", "ftp://127.0.0.1:5001", "http://127.0.0.1:notaport"):
        for args in [
            ("mount", str(h.mnt), "--token-file", str(h.token_file)),
            ("mount", str(h.mnt), "--foreground", "--token-file", str(h.token_file)),
            ("recover", "bafkqaaa"),
        ]:
            result = h.jwtfs(*args, "--ipfs-api", url, check=False)
            line = one_line_error(result)
            assert line.startswith("jwtfs: --ipfs-api "), args
            assert not h.attached(), args
    assert tree_state(h.config_dir, h.data_dir) == before
    h.mount()
    assert os.listdir(h.mnt) == []


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "soon"])
def test_flush_refuses_a_timeout_that_is_not_finite_seconds(
    vault_with_token: VaultHarness, timeout: str
) -> None:
    h = vault_with_token
    h.set_config("ipfs", "api", f"http://127.0.0.1:{closed_loopback_port()}")
    result = h.jwtfs("flush", "--wait", "--timeout", timeout, check=False, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"jwtfs: --timeout {timeout}: give the seconds to wait, or 0 for no limit\n"
    )


def test_init_writes_every_setting_and_its_defaults_hold(tmp_path: Path) -> None:
    h = VaultHarness(tmp_path)
    h.jwtfs("init")
    path = h.config_dir / "config.toml"
    text = path.read_text()
    assert 'api = "http://127.0.0.1:5001"' in text
    # No command here may reach the default node: it is not the test's.
    h.set_config("ipfs", "api", "none")
    text = path.read_text()
    written = parse_config(path, tomllib.loads(text))

    for table, keys in KEYS.items():
        assert f"[{table}]" in text
        for key in keys:
            assert re.search(rf"^(# )?{key} = ", text, re.M), f"{table}.{key}"

    # The commented-out values outside [auth] are the defaults, except the
    # example of a credential.
    table = ""
    lines = []
    for line in text.splitlines():
        if line.startswith("["):
            table = line
        example = table == "[auth]" or line.startswith("# authorization")
        if re.match(r"# \w+ = ", line) and not example:
            line = line.removeprefix("# ")
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    assert parse_config(path, tomllib.loads(path.read_text())) == written
    assert h.jwtfs("index").returncode == 0
