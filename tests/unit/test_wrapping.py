"""The master key at rest: wrapped, given as a systemd credential, exported once."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from jwtfs.crypto.keys import MasterKey, generate_master_key
from jwtfs.crypto.wrapping import (
    open_master_key,
    parse_recovery_form,
    recovery_form,
    unwrap_key,
    wrap_key,
    write_wrapped,
)
from jwtfs.errors import ConfigError
from tests.harness import VaultHarness

KEY = MasterKey(bytes(range(32)))


def test_wrap_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    text = wrap_key(KEY, "correct horse")
    assert KEY.raw.hex() not in text
    assert unwrap_key(tmp_path / "k", text, "correct horse").raw == KEY.raw
    with pytest.raises(ConfigError, match="wrong passphrase"):
        unwrap_key(tmp_path / "k", text, "wrong")


def test_lowered_scrypt_parameters_are_refused(tmp_path: Path) -> None:
    text = wrap_key(KEY, "pw").replace("n=32768", "n=1024")
    with pytest.raises(ConfigError, match="not a jwtfs wrapped key file"):
        unwrap_key(tmp_path / "k", text, "pw")


def test_wrapped_key_file_opens_with_the_passphrase_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "master.key"
    key = generate_master_key(path)
    write_wrapped(path, key, "s3cret")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    secret = tmp_path / "pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    monkeypatch.setenv("JWTFS_PASSPHRASE_FILE", str(secret))
    assert open_master_key(path).raw == key.raw


def test_systemd_credential_takes_the_place_of_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    generate_master_key(credentials / "master.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    key = open_master_key(tmp_path / "missing.key")
    assert key.raw == (credentials / "master.key").read_bytes()


def test_recovery_form_round_trip_and_check_group() -> None:
    form = recovery_form(KEY)
    assert parse_recovery_form(form).raw == KEY.raw
    broken = ("1" if form[0] != "1" else "2") + form[1:]
    with pytest.raises(ConfigError, match="check group"):
        parse_recovery_form(broken)


def _on_terminal(h: VaultHarness, *args: str) -> tuple[int, str]:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "jwtfs", *args],
        env=h.env,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=30), output.decode(errors="replace")


def test_key_export_to_a_terminal_once(fresh_vault: VaultHarness) -> None:
    piped = fresh_vault.jwtfs("key", "export", check=False)
    assert piped.returncode == 2 and "terminal only" in piped.stderr
    assert piped.stdout == ""
    code, output = _on_terminal(fresh_vault, "key", "export")
    assert code == 0
    raw = (fresh_vault.config_dir / "master.key").read_bytes()
    printed = next(line for line in output.splitlines() if " / " in line)
    assert parse_recovery_form(printed).raw == raw
    code, output = _on_terminal(fresh_vault, "key", "export")
    assert code == 2 and "exported already" in output


def test_key_import_restores_the_key(fresh_vault: VaultHarness) -> None:
    path = fresh_vault.config_dir / "master.key"
    raw = path.read_bytes()
    path.unlink()
    result = fresh_vault.jwtfs(
        "key", "import", input=recovery_form(MasterKey(raw)) + "\n"
    )
    assert "restored" in result.stdout
    assert path.read_bytes() == raw
