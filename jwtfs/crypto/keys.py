"""The master key and the checks every secret file must pass.

The master key is 32 random bytes in a file that only its owner may read or
write. Every per-file key is derived from it (see ``segments``), so whoever
holds it can read every stream the vault ever wrote. The key never appears in
a ``repr``, a log line or an exception message; ``fingerprint()`` gives a short
value that is safe to show, to tell two keys apart.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import NoReturn

from jwtfs.errors import ConfigError

MASTER_KEY_SIZE = 32

# Group and other may neither read nor write a secret file. An execute bit
# grants nothing on a regular file's content, so it is tolerated.
_FORBIDDEN_READ = stat.S_IRGRP | stat.S_IROTH
_FORBIDDEN_WRITE = stat.S_IWGRP | stat.S_IWOTH

# Domain separation: the fingerprint is a hash of the key under its own label,
# so it reveals nothing usable about the key or any key derived from it.
_FINGERPRINT_LABEL = b"jwtfs fingerprint"


class MasterKey:
    """Thirty-two secret bytes whose ``repr`` and ``str`` never show them."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        """Wrap ``raw``.

        Raises:
            ValueError: ``raw`` is not exactly 32 bytes.
        """
        if len(raw) != MASTER_KEY_SIZE:
            raise ValueError(f"a master key is {MASTER_KEY_SIZE} bytes")
        self._raw = bytes(raw)

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Pickling would copy the key into whatever the pickle is written to.
        raise TypeError("a MasterKey cannot be pickled")

    @property
    def raw(self) -> bytes:
        """The key bytes, for the key derivation in ``segments`` only."""
        return self._raw

    def fingerprint(self) -> str:
        """Return 8 hex digits that identify the key and are safe to show."""
        digest = hashlib.sha256(_FINGERPRINT_LABEL + self._raw).hexdigest()
        return digest[:8]


def generate_master_key(path: Path) -> MasterKey:
    """Create ``path`` holding a new random master key, mode 0600.

    The file is created exclusively, so an existing key is never overwritten,
    and it is synced together with its directory entry before returning.

    Raises:
        ConfigError: ``path`` exists or cannot be created.
    """
    key = MasterKey(os.urandom(MASTER_KEY_SIZE))
    _write_exclusive(path, key.raw, 0o600, "master key")
    return key


def load_master_key(path: Path) -> MasterKey:
    """Read the master key from ``path`` after checking its owner and mode.

    Raises:
        ConfigError: the file is missing, unreadable, not a regular file, not
            owned by the current user, readable or writable by group or
            other, or not exactly 32 bytes. The message is one line naming
            the file and the fix.
    """
    data = _read_private(path, "master key", missing_fix="run 'jwtfs init'")
    if len(data) != MASTER_KEY_SIZE:
        raise ConfigError(
            f"{path}: the master key must be {MASTER_KEY_SIZE} bytes, this file "
            f"holds {len(data)}; restore the key file from your backup"
        )
    return MasterKey(data)


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that other users could read or change.

    ``what`` names the secret in the message, e.g. "signing key".

    Raises:
        ConfigError: the file is missing, not a regular file, not owned by the
            current user, or readable or writable by group or other.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file; check the {what} path") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    _check_stat(st, path, what)


def _check_stat(st: os.stat_result, path: Path, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: the {what} is not a regular file")
    uid = os.getuid()
    if st.st_uid != uid:
        raise ConfigError(
            f"{path}: the {what} is owned by uid {st.st_uid}, not by you "
            f"(uid {uid}); use a copy you own, with mode 600"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & _FORBIDDEN_READ:
        verb = "read"
    elif mode & _FORBIDDEN_WRITE:
        verb = "change"
    else:
        return
    raise ConfigError(
        f"{path}: mode {mode:04o} lets other users {verb} the {what}; "
        f"run chmod 600 {path}"
    )


def _read_private(path: Path, what: str, *, missing_fix: str) -> bytes:
    """Open ``path``, check the opened file itself, and read it whole.

    Checking the open descriptor rather than the name leaves no gap in which
    the file could be swapped between the check and the read. ``O_NONBLOCK``
    keeps a FIFO in its place from blocking the open; it is refused next.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no {what} here; {missing_fix}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    try:
        _check_stat(os.fstat(fd), path, what)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


def _write_exclusive(path: Path, data: bytes, mode: int, what: str) -> None:
    """Create ``path`` with ``data`` and ``mode``, failing if it exists.

    ``fchmod`` sets the mode after creation because the mode given to
    ``open`` is narrowed by the umask, which could make a public key
    unreadable; a private mode can only get narrower that way. On any
    failure after creation the partial file is removed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode & 0o600)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path}: a {what} already exists; move it away first if you "
            "really mean to replace it"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the {what}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write the {what}: {exc.strerror}") from exc
    os.close(fd)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The new directory entry is durable only once the directory is synced.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot sync: {exc.strerror}") from exc
