"""The master key at rest: plain, wrapped by a passphrase, or a systemd credential.

A wrapped key file is text, so it survives copying and printing:

    jwtfs-wrapped-key v1 scrypt n=32768 r=8 p=1
    salt <32 hex digits>
    data <hex of nonce (12 bytes) || AES-256-GCM(master key) || tag (16 bytes)>

The wrapping key is scrypt(passphrase, salt, n, r, p) with 32 bytes of output;
the parameters follow RFC 7914's interactive recommendation (about 32 MiB of
memory and a fraction of a second). The associated data is the first line,
so the parameters cannot be lowered without the unwrap failing.

The passphrase comes from, in order: the file named by ``JWTFS_PASSPHRASE_FILE``,
the systemd credential ``passphrase`` (``$CREDENTIALS_DIRECTORY/passphrase``),
or a prompt on the terminal. The whole master key may also come as the systemd
credential ``master.key``, which then takes the place of the key file.

The recovery form ``jwtfs key export`` prints is the key in groups of hex
digits with a check value, read back by ``parse_recovery_form``.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import secrets
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from jwtfs.crypto.keys import (
    MASTER_KEY_SIZE,
    MasterKey,
    _read_private,
    _write_exclusive,
    load_master_key,
)
from jwtfs.errors import ConfigError

_MAGIC = "jwtfs-wrapped-key v1"
_N, _R, _P = 2**15, 8, 1
_FIRST_LINE = f"{_MAGIC} scrypt n={_N} r={_R} p={_P}"
CREDENTIAL_KEY = "master.key"
# Names of places a passphrase comes from, not passphrases (ruff S105).
CREDENTIAL_PASSPHRASE = "passphrase"  # noqa: S105
PASSPHRASE_FILE_ENV = "JWTFS_PASSPHRASE_FILE"  # noqa: S105


def _wrapping_key(passphrase: str, salt: bytes) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=_N, r=_R, p=_P)
    return kdf.derive(passphrase.encode("utf-8"))


def wrap_key(key: MasterKey, passphrase: str) -> str:
    """Return the text of a key file holding ``key`` wrapped by ``passphrase``."""
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_wrapping_key(passphrase, salt)).encrypt(
        nonce, key.raw, _FIRST_LINE.encode()
    )
    return f"{_FIRST_LINE}\nsalt {salt.hex()}\ndata {(nonce + sealed).hex()}\n"


def is_wrapped(data: bytes) -> bool:
    return data.startswith(_MAGIC.encode())


def unwrap_key(path: Path, text: str, passphrase: str) -> MasterKey:
    """Open a wrapped key file's text with ``passphrase``.

    Raises:
        ConfigError: the file is malformed or the passphrase is wrong.
    """
    lines = text.strip().splitlines()
    try:
        first, salt_line, data_line = lines
        if first != _FIRST_LINE:
            raise ValueError("unknown wrapping parameters")
        salt = bytes.fromhex(salt_line.removeprefix("salt "))
        blob = bytes.fromhex(data_line.removeprefix("data "))
    except ValueError as err:
        raise ConfigError(f"{path}: not a jwtfs wrapped key file ({err})") from err
    try:
        raw = AESGCM(_wrapping_key(passphrase, salt)).decrypt(
            blob[:12], blob[12:], first.encode()
        )
    except InvalidTag:
        raise ConfigError(f"{path}: wrong passphrase for the master key") from None
    return MasterKey(raw)


def read_passphrase(prompt: str = "passphrase for the master key: ") -> str:
    """The passphrase from its file, the systemd credential, or the terminal.

    Raises:
        ConfigError: none of them is available.
    """
    named = os.environ.get(PASSPHRASE_FILE_ENV)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    for candidate in (
        Path(named) if named else None,
        Path(credentials) / CREDENTIAL_PASSPHRASE if credentials else None,
    ):
        if candidate is not None and candidate.exists():
            data = _read_private(candidate, "passphrase", missing_fix="create it")
            return data.decode("utf-8").rstrip("\r\n")
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    raise ConfigError(
        f"the master key is wrapped and no passphrase is at hand; set "
        f"{PASSPHRASE_FILE_ENV}, pass the systemd credential "
        f"'{CREDENTIAL_PASSPHRASE}', or run on a terminal"
    )


def open_master_key(path: Path) -> MasterKey:
    """Load the master key: a systemd credential, a wrapped or a plain key file.

    Raises:
        ConfigError: as for ``load_master_key``, or for a wrapped key whose
            passphrase is missing or wrong.
    """
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_KEY).exists():
        path = Path(credentials) / CREDENTIAL_KEY
    data = _read_private(path, "master key", missing_fix="run 'jwtfs init'")
    if is_wrapped(data):
        return unwrap_key(path, data.decode("ascii", "replace"), read_passphrase())
    return load_master_key(path)


def write_wrapped(path: Path, key: MasterKey, passphrase: str) -> None:
    """Replace the key file at ``path`` by its wrapped form, atomically."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    _write_exclusive(tmp, wrap_key(key, passphrase).encode(), 0o600, "master key")
    os.replace(tmp, path)


def write_plain(path: Path, key: MasterKey) -> None:
    """Replace the key file at ``path`` by the plain 32 bytes, atomically."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    _write_exclusive(tmp, key.raw, 0o600, "master key")
    os.replace(tmp, path)


def _check_value(raw: bytes) -> str:
    return hashlib.sha256(b"jwtfs recovery check" + raw).hexdigest()[:4]


def recovery_form(key: MasterKey) -> str:
    """The key as 16 groups of 4 hex digits plus a 4-digit check group."""
    digits = key.raw.hex()
    groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    return " ".join(groups) + " / " + _check_value(key.raw)


def parse_recovery_form(text: str) -> MasterKey:
    """Read back what ``recovery_form`` printed.

    Raises:
        ConfigError: the text is not a recovery form, or its check fails.
    """
    body, _, check = text.partition("/")
    digits = "".join(body.split())
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raise ConfigError("recovery form: only hex digits are expected") from None
    if len(raw) != MASTER_KEY_SIZE:
        raise ConfigError(f"recovery form: {MASTER_KEY_SIZE * 2} hex digits expected")
    if check.strip() and check.strip() != _check_value(raw):
        raise ConfigError("recovery form: the check group does not match; retype it")
    return MasterKey(raw)
