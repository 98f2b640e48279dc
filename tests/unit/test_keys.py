"""The master key file and the checks on secret files."""

from __future__ import annotations

import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from jwtfs.crypto.keys import (
    MasterKey,
    check_private_file,
    generate_master_key,
    load_master_key,
)
from jwtfs.errors import ConfigError

KEY_BYTES = bytes(range(32))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    path.write_bytes(KEY_BYTES)
    path.chmod(0o600)
    return path


@pytest.fixture
def wide_umask() -> Iterator[None]:
    old = os.umask(0o277)
    yield
    os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_then_load_gives_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    created = generate_master_key(path)
    loaded = load_master_key(path)
    assert loaded.raw == created.raw
    assert len(path.read_bytes()) == 32
    assert mode_of(path) == 0o600


def test_generate_sets_0600_whatever_the_umask(
    tmp_path: Path, wide_umask: None
) -> None:
    path = tmp_path / "master.key"
    generate_master_key(path)
    assert mode_of(path) == 0o600


def test_two_generated_keys_differ(tmp_path: Path) -> None:
    first = generate_master_key(tmp_path / "a.key")
    second = generate_master_key(tmp_path / "b.key")
    assert first.raw != second.raw


def test_generate_refuses_an_existing_file(key_file: Path) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        generate_master_key(key_file)
    assert key_file.read_bytes() == KEY_BYTES


def test_generate_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "master.key"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="already exists"):
        generate_master_key(link)
    assert not target.exists()


def test_generate_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "master.key"
    with pytest.raises(ConfigError) as info:
        generate_master_key(path)
    assert str(info.value) == (
        f"{path}: cannot create the master key: No such file or directory"
    )


def test_load_reads_the_key(key_file: Path) -> None:
    assert load_master_key(key_file).raw == KEY_BYTES


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_accepted(key_file: Path, mode: int) -> None:
    key_file.chmod(mode)
    assert load_master_key(key_file).raw == KEY_BYTES


def test_load_refuses_0644_with_the_fix(key_file: Path) -> None:
    key_file.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_master_key(key_file)
    assert str(info.value) == (
        f"{key_file}: mode 0644 lets other users read the master key; "
        f"run chmod 600 {key_file}"
    )


@pytest.mark.parametrize(
    ("mode", "verb"),
    [(0o640, "read"), (0o604, "read"), (0o620, "change"), (0o602, "change")],
)
def test_load_refuses_group_or_other_access(
    key_file: Path, mode: int, verb: str
) -> None:
    key_file.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_master_key(key_file)
    assert str(info.value) == (
        f"{key_file}: mode {mode:04o} lets other users {verb} the master key; "
        f"run chmod 600 {key_file}"
    )


def test_load_refuses_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    with pytest.raises(ConfigError) as info:
        load_master_key(path)
    assert str(info.value) == f"{path}: no master key here; run 'jwtfs init'"


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_load_refuses_a_wrong_size(key_file: Path, size: int) -> None:
    key_file.write_bytes(bytes(size))
    with pytest.raises(ConfigError) as info:
        load_master_key(key_file)
    assert str(info.value) == (
        f"{key_file}: the master key must be 32 bytes, this file holds {size}; "
        "restore the key file from your backup"
    )


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_master_key(tmp_path)
    assert str(info.value) == f"{tmp_path}: the master key is not a regular file"


def test_load_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    os.mkfifo(path, 0o600)
    with pytest.raises(ConfigError) as info:
        load_master_key(path)
    assert str(info.value) == f"{path}: the master key is not a regular file"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file away")
def test_load_refuses_a_file_of_another_user(key_file: Path) -> None:
    os.chown(key_file, 65534, -1)
    with pytest.raises(ConfigError) as info:
        load_master_key(key_file)
    assert str(info.value) == (
        f"{key_file}: the master key is owned by uid 65534, not by you (uid 0); "
        "use a copy you own, with mode 600"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_check_private_file_accepts_owner_only(key_file: Path, mode: int) -> None:
    key_file.chmod(mode)
    check_private_file(key_file, "token file")


def test_check_private_file_names_the_secret(key_file: Path) -> None:
    key_file.chmod(0o664)
    with pytest.raises(ConfigError) as info:
        check_private_file(key_file, "token file")
    assert str(info.value) == (
        f"{key_file}: mode 0664 lets other users read the token file; "
        f"run chmod 600 {key_file}"
    )


def test_check_private_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    with pytest.raises(ConfigError) as info:
        check_private_file(path, "token file")
    assert str(info.value) == f"{path}: no such file; check the token file path"


def test_repr_str_and_format_are_redacted() -> None:
    key = MasterKey(KEY_BYTES)
    # Logging formats its arguments with %, so that path is checked as well.
    logged = "%s %r" % (key, key)  # noqa: UP031
    shown = [repr(key), str(key), f"{key}", f"{key!r}", logged]
    assert shown[:4] == ["MasterKey(<redacted>)"] * 4
    for text in shown:
        assert KEY_BYTES.hex() not in text
        assert repr(KEY_BYTES) not in text
    assert KEY_BYTES.hex() not in repr([key, {"k": key}])


def test_master_key_cannot_be_pickled() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(MasterKey(KEY_BYTES))


def test_fingerprint_is_fixed_and_short() -> None:
    assert MasterKey(KEY_BYTES).fingerprint() == "af447ab3"
    assert MasterKey(bytes(32)).fingerprint() != "af447ab3"


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_master_key_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey(bytes(size))
