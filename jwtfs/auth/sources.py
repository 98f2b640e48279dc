"""Where tokens come from: the token file and ``JWTFS_TOKEN``, unioned.

The token file holds one JWT a line; blank lines and lines starting with ``#``
are ignored. ``refresh`` re-reads it when its identity, size or times change
(so an edit, a rename over it or a symlink swap all count), has the verifier
reload its keys when a key file or the revocation file changed the same way,
and re-checks every token when the keys were reloaded or a token's ``nbf`` or
``exp`` has been passed. Called once a second, it makes a revocation or a new
token count within that second. ``grants`` is the hot path, asked on every FUSE
request: it does no I/O and reads the clock once, dropping a token the moment
its ``exp`` plus the leeway has passed, without waiting for ``refresh``.

The file is opened once and read from that descriptor, at most 1 MiB, with
``O_NONBLOCK`` so a FIFO put in its place cannot hang the daemon. A file that
cannot be read counts as holding no tokens: deleting the file revokes access.

Tokens never reach a log; a token is named by its fingerprint and, once its
signature has verified, its ``sub``. Denials are logged at INFO with their
reason, each distinct one once a minute, at most ``MAX_DENIAL_LINES`` a
minute; the rest are counted in one summary line.

Not thread-safe: the fs layer calls it from the trio thread only.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from jwtfs.auth.scope import Grants
from jwtfs.auth.tokens import (
    Verdict,
    VerifiedToken,
    Verifier,
    format_time,
    is_compact_jws,
)
from jwtfs.errors import ConfigError, TokenExpiredError

log = logging.getLogger(__name__)

MAX_TOKEN_FILE_BYTES = 1024 * 1024
ENV_ORIGIN = "JWTFS_TOKEN"
DENIAL_WINDOW_SECONDS = 60.0
MAX_DENIAL_LINES = 100
_SHOWN_SUB_CHARS = 64


def check_token_file(path: Path) -> list[str]:
    """Check the token file named to ``jwtfs mount`` before mounting.

    Returns warnings that do not stop the mount (a file other users can read
    or change, a file with no tokens).

    Raises:
        ConfigError: the file is missing, unreadable, not a regular file,
            larger than 1 MiB, not UTF-8, or has a line that is not a JWT.
    """
    text, st = _read_token_file(path)
    lines = _token_lines(text)
    for number, line in lines:
        if not is_compact_jws(line):
            raise ConfigError(
                f"{path}: line {number} is not a JWT (three base64url parts "
                "separated by '.'); one token a line, '#' starts a comment"
            )
    warnings = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o066:
        warnings.append(
            f"{path}: mode {mode:04o} lets other users see or change the tokens; "
            f"run chmod 600 {path}"
        )
    if not lines:
        warnings.append(
            f"{path}: holds no tokens; every access is refused until one is added"
        )
    return warnings


@dataclass
class _Entry:
    origin: str
    verdict: Verdict


class TokenSource:
    """The tokens of one mount, and the grants of those that are valid now.

    ``clock`` defaults to the verifier's, so both judge time alike.
    """

    def __init__(
        self,
        verifier: Verifier,
        token_file: Path | None,
        env_token: str | None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._verifier = verifier
        self._path = token_file
        self._clock = clock or verifier.clock
        self._env_tokens = [(ENV_ORIGIN, t) for _, t in _token_lines(env_token or "")]
        self._file_tokens: list[tuple[str, str]] = []
        self._file_state: object = None
        self._file_problem: str | None = None
        self._entries: list[_Entry] = []
        self._valid: tuple[VerifiedToken, ...] = ()
        self._grants = Grants.empty()
        self._changed = False
        self._expires_at = math.inf
        self._recheck_at = math.inf
        self._generation = -1
        self._logged: set[tuple[str, str]] = set()
        self._denials = _DenialLog()
        self._key_state = self._key_files_state()
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the token file if it changed, and re-check tokens if due.

        Tokens are checked again when the file changed, the verifier's keys
        were reloaded, or the clock passed a token's ``nbf`` or ``exp``.
        Returns whether the effective grants changed since the last call,
        counting changes that came and went in between (an expiry, then a new
        token in the file), since kernel caches may hold either.
        """
        now = self._clock()
        self._denials.flush(now)
        self._poll_key_files()
        if (
            self._poll_file()
            or self._verifier.generation != self._generation
            or now >= self._recheck_at
        ):
            self._evaluate()
        self.grants()
        changed, self._changed = self._changed, False
        return changed

    def grants(self) -> Grants:
        """Return the union of the grants of the tokens valid now."""
        now = self._clock()
        if now >= self._expires_at:
            self._drop_expired(now)
        return self._grants

    def has_valid_token(self) -> bool:
        """Whether any token is valid now."""
        self.grants()
        return bool(self._valid)

    def next_deadline(self) -> float | None:
        """The next time the grants can change by the clock alone, if any."""
        deadline = min(self._expires_at, self._recheck_at)
        return None if deadline == math.inf else deadline

    @property
    def subjects(self) -> tuple[str | None, ...]:
        """The ``sub`` of each valid token, for status and logs."""
        return tuple(t.sub for t in self._valid)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """The fingerprint of each valid token, for status and logs."""
        return tuple(t.fingerprint for t in self._valid)

    def deny(self, path: bytes, action: str) -> None:
        """Log that ``action`` on ``path`` was refused, and why.

        Each distinct denial is logged once a minute at most; see the module
        docstring.
        """
        now = self._clock()
        self.grants()
        if self._valid:
            who = ", ".join(_describe_token(t.sub, t.fingerprint) for t in self._valid)
            noun = "token" if len(self._valid) == 1 else "tokens"
            why = f"{noun} {who}: path outside scope"
        else:
            why = f"no valid token: {self._why_none()}"
        shown = _printable(path.decode("utf-8", "backslashreplace"))
        if self._denials.admit((action, path, why), now):
            log.info("access denied: %s %s (%s)", action, shown, why)

    def _why_none(self) -> str:
        verdicts = [e.verdict for e in self._entries]
        reasons = [
            f"{_describe_token(v.sub, v.fingerprint)}: {v.error}" for v in verdicts
        ]
        if reasons:
            return "; ".join(reasons)
        if self._file_problem is not None:
            return self._file_problem
        if self._path is not None:
            return f"{self._path} holds no tokens and {ENV_ORIGIN} is not set"
        return f"no --token-file given and {ENV_ORIGIN} is not set"

    def _key_files_state(self) -> tuple[object, ...]:
        return tuple(_file_state(p) for p in self._verifier.watched_files)

    def _poll_key_files(self) -> None:
        state = self._key_files_state()
        if state == self._key_state:
            return
        self._key_state = state
        try:
            self._verifier.reload_keys()
        except ConfigError as err:
            log.warning("keys not reloaded, the previous ones stay in use: %s", err)

    def _poll_file(self) -> bool:
        """Re-read the token file if it changed; return whether it was read."""
        if self._path is None:
            return False
        state = _file_state(self._path)
        if state == self._file_state:
            return False
        self._file_state = state
        try:
            text, _ = _read_token_file(self._path)
        except ConfigError as err:
            log.info("token file unusable, its tokens are dropped: %s", err)
            self._file_problem = str(err)
            self._file_tokens = []
            return True
        self._file_problem = None
        self._file_tokens = [
            (f"{self._path} line {n}", token) for n, token in _token_lines(text)
        ]
        log.info("token file %s read: %d tokens", self._path, len(self._file_tokens))
        return True

    def _evaluate(self) -> None:
        self._generation = self._verifier.generation
        origins: dict[str, str] = {}
        for origin, raw in (*self._env_tokens, *self._file_tokens):
            origins.setdefault(raw, origin)
        self._entries = [
            _Entry(origin, self._verifier.check(raw)) for raw, origin in origins.items()
        ]
        self._log_refusals()
        starts = [e.verdict.valid_from for e in self._entries]
        self._recheck_at = min((t for t in starts if t is not None), default=math.inf)
        previous = set(self.fingerprints)
        self._set_valid(e.verdict.token for e in self._entries if e.verdict.token)
        for token in self._valid:
            if token.fingerprint not in previous:
                log.info(
                    "token accepted: %s, until %s, %d grants%s",
                    _describe_token(token.sub, token.fingerprint),
                    format_time(token.exp),
                    len(token.grants.items),
                    _ignored(token.rejected_scopes),
                )

    def _log_refusals(self) -> None:
        current = set()
        for entry in self._entries:
            verdict = entry.verdict
            if verdict.error is None:
                continue
            key = (verdict.fingerprint, str(verdict.error))
            current.add(key)
            if key not in self._logged:
                log.info(
                    "token refused (%s, %s): %s",
                    entry.origin,
                    _describe_token(verdict.sub, verdict.fingerprint),
                    verdict.error,
                )
        self._logged = current

    def _drop_expired(self, now: float) -> None:
        leeway = self._verifier.leeway
        expired = {t.fingerprint: t for t in self._valid if now >= t.exp + leeway}
        for entry in self._entries:
            token = entry.verdict.token
            if token is None or token.fingerprint not in expired:
                continue
            error = TokenExpiredError(f"expired at {format_time(token.exp)}")
            entry.verdict = Verdict(token.fingerprint, None, error, token.sub)
            self._logged.add((token.fingerprint, str(error)))
            log.info(
                "token %s: %s", _describe_token(token.sub, token.fingerprint), error
            )
        self._set_valid(t for t in self._valid if t.fingerprint not in expired)

    def _set_valid(self, tokens: Iterable[VerifiedToken]) -> None:
        self._valid = tuple(tokens)
        grants = Grants.union(t.grants for t in self._valid)
        self._changed = self._changed or grants != self._grants
        self._grants = grants
        leeway = self._verifier.leeway
        self._expires_at = min((t.exp + leeway for t in self._valid), default=math.inf)


class _DenialLog:
    """Decides which denials are logged: each distinct one once a window."""

    def __init__(self) -> None:
        self._window_start = -math.inf
        self._seen: set[tuple[str, bytes, str]] = set()
        self._suppressed = 0

    def admit(self, key: tuple[str, bytes, str], now: float) -> bool:
        self.flush(now)
        if key in self._seen:
            return False
        if len(self._seen) >= MAX_DENIAL_LINES:
            self._suppressed += 1
            return False
        self._seen.add(key)
        return True

    def flush(self, now: float) -> None:
        """Start a new window if the current one is over."""
        if now - self._window_start < DENIAL_WINDOW_SECONDS:
            return
        if self._suppressed:
            log.info(
                "access denied %d more times in the last %d s (not logged one by one)",
                self._suppressed,
                DENIAL_WINDOW_SECONDS,
            )
        self._window_start = now
        self._seen.clear()
        self._suppressed = 0


def _file_state(path: Path) -> object:
    """What tells a changed token file from an unchanged one."""
    try:
        st = os.stat(path)
    except OSError as err:
        return f"{path}: {err.strerror}"
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_token_file(path: Path) -> tuple[str, os.stat_result]:
    """Read the token file through one descriptor; return its text and status.

    Raises:
        ConfigError: missing, unreadable, not a regular file, over 1 MiB or
            not UTF-8.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: token file not found; create it with "
            f"'jwtfs token issue ... > {path}' or drop --token-file"
        ) from None
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot read the token file: {err.strerror}"
        ) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: the token file is not a regular file")
        data = _read_at_most(fd, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot read the token file: {err.strerror}"
        ) from err
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(f"{path}: the token file is larger than 1 MiB")
    try:
        return data.decode("utf-8"), st
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: the token file is not UTF-8 text") from err


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _token_lines(text: str) -> list[tuple[int, str]]:
    """Return (line number, token) for each line that is not blank or a comment."""
    lines = ((n, line.strip()) for n, line in enumerate(text.splitlines(), 1))
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def _describe_token(sub: str | None, fingerprint: str) -> str:
    if sub is None:
        return f"fp={fingerprint}"
    shown = sub if len(sub) <= _SHOWN_SUB_CHARS else sub[:_SHOWN_SUB_CHARS] + "…"
    return f"sub={_printable(shown)} fp={fingerprint}"


def _printable(text: str) -> str:
    """Keep a log line one line: escape what is not printable."""
    return text if text.isprintable() else ascii(text)


def _ignored(rejected: tuple[str, ...]) -> str:
    if not rejected:
        return ""
    return f"; ignored scope items: {'; '.join(rejected)}"
