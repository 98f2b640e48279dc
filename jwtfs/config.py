"""Where a vault keeps its files, and its settings, read from TOML.

Layout (XDG base directories):

    $XDG_CONFIG_HOME/jwtfs/config.toml     settings (this module)
    $XDG_CONFIG_HOME/jwtfs/master.key      32-byte master key, mode 0600
    $XDG_CONFIG_HOME/jwtfs/signing.key     Ed25519 private key (PEM), mode 0600
    $XDG_CONFIG_HOME/jwtfs/signing.pub     its public key, used to verify tokens
    $XDG_DATA_HOME/jwtfs/                  index.sqlite3, store/, staging/
    $XDG_RUNTIME_DIR/jwtfs/                one file per running mount

Every problem is a ``ConfigError`` whose message names the file, the key and
the fix, so the CLI can print it as one line and exit 2. A table or key not
in ``KEYS`` is such a problem too: a misspelt setting must not fall back to
its default unnoticed.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jwtfs.errors import ConfigError

CONFIG_NAME = "config.toml"
DEFAULT_LEEWAY_SECONDS = 30
DEFAULT_IPFS_API = "http://127.0.0.1:5001"
# Upper bounds that no sensible setting reaches, so that nothing downstream
# meets an infinity, a NaN or an integer too large for a float or SQLite.
MAX_TIMEOUT_SECONDS = 86400
MAX_LEEWAY_SECONDS = 86400
MAX_DURATION_SECONDS = 3650 * 86400

# Every table of config.toml and its keys; anything else is refused.
KEYS: dict[str, tuple[str, ...]] = {
    "vault": ("data_dir", "master_key"),
    "auth": (
        "audience",
        "hmac_secret",
        "issuer",
        "issuers",
        "jwks",
        "keys",
        "leeway",
        "revocations",
        "signing_key",
    ),
    "ipfs": (
        "api",
        "authorization",
        "fetch_timeout",
        "timeout",
        "upload_while_writing",
    ),
    "retention": ("keep_for", "keep_versions"),
    "cache": ("max_size",),
    "backup": ("interval",),
}


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def config_dir() -> Path:
    """Return the directory holding the config and the keys."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "jwtfs"


def default_data_dir() -> Path:
    """Return the default directory of the index, the store and staging."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "jwtfs"


def runtime_dir() -> Path:
    """Return the directory for per-mount runtime files (pid, socket)."""
    value = os.environ.get("XDG_RUNTIME_DIR", "")
    base = Path(value) if value and os.path.isabs(value) else Path("/tmp")  # noqa: S108
    return base / f"jwtfs-{os.getuid()}" if not value else base / "jwtfs"


@dataclass(frozen=True)
class AuthConfig:
    """How tokens are verified.

    ``key_files`` are public keys (PEM, DER or OpenSSH); ``jwks_file`` a JWKS; the
    two may be combined. ``hmac_secret_file`` enables HS256 and then must be
    the only key source, so a public key can never double as an HMAC secret.
    """

    audience: str
    issuers: tuple[str, ...] = ()
    leeway: int = DEFAULT_LEEWAY_SECONDS
    key_files: tuple[Path, ...] = ()
    jwks_file: Path | None = None
    hmac_secret_file: Path | None = None
    revocation_file: Path | None = None
    signing_key_file: Path | None = None
    issuer: str | None = None


@dataclass(frozen=True)
class IpfsConfig:
    """Where pins go. ``api`` of None means the embedded store only.

    ``authorization`` is the value of the ``Authorization`` header Kubo's
    ``API.Authorizations`` expects; it comes from the config file or the
    ``IPFS_API_AUTHORIZATION`` environment variable, never the command line.
    ``timeout`` bounds every request; ``fetch_timeout`` bounds a read that must
    fetch evicted content, so a reader gets EIO instead of hanging.
    ``upload_while_writing`` lets a file written front to back be uploaded
    while it is written, so its pin follows soon after the close; None
    (``"auto"``) means only when the node is on another machine, since a
    node on this one takes CPU and disk from the writer meanwhile.
    """

    api: str | None = DEFAULT_IPFS_API
    authorization: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    fetch_timeout: float = 30.0
    upload_while_writing: bool | None = None

    def uploads_while_writing(self) -> bool:
        """Whether to upload during writes, with ``"auto"`` resolved."""
        if self.api is None:
            return False
        if self.upload_while_writing is not None:
            return self.upload_while_writing
        return not is_loopback_url(self.api)


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RetentionConfig:
    """How long superseded versions stay (locally and pinned).

    A superseded version goes once it is neither among the last
    ``keep_versions`` superseded versions of its file nor younger than
    ``keep_seconds``. The current version always stays.
    """

    keep_versions: int = 1
    keep_seconds: int = 600


@dataclass(frozen=True)
class BackupConfig:
    """An index snapshot is pinned at most every ``interval`` seconds, after changes."""

    interval: int = 60


@dataclass(frozen=True)
class CacheConfig:
    """Local copies of pinned content beyond ``max_bytes`` may be evicted (0: never)."""

    max_bytes: int = 0


@dataclass(frozen=True)
class Config:
    """Everything a vault needs, resolved to absolute paths."""

    path: Path
    data_dir: Path
    master_key_file: Path
    auth: AuthConfig
    ipfs: IpfsConfig = field(default_factory=IpfsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)

    @property
    def index_file(self) -> Path:
        return self.data_dir / "index.sqlite3"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"


class _Table:
    """A TOML table that names file and key in every error."""

    def __init__(self, path: Path, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        self.path, self.name, self.data = path, name, data
        known = KEYS[name]
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"{path}: unknown key {name}.{_quoted(key)} "
                    f"(known: {', '.join(known)})"
                )

    def _fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.name}.{key} {what}")

    def _get(self, key: str, default: Any) -> Any:
        assert key in KEYS[self.name], f"{self.name}.{key} is missing from KEYS"
        return self.data.get(key, default)

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key, default)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "must be a string")
        return value

    def switch(self, key: str) -> bool | None:
        """A setting of true, false or "auto" (None); absent means auto."""
        value = self._get(key, "auto")
        if value == "auto":
            return None
        if not isinstance(value, bool):
            raise self._fail(key, 'must be true, false or "auto"')
        return value

    def integer(
        self, key: str, default: int, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self._get(key, default)
        rule = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer {rule}")
        if value < minimum or (maximum is not None and value > maximum):
            raise self._fail(key, f"must be an integer {rule}")
        return value

    def seconds(self, key: str, default: float, maximum: float) -> float:
        """A positive number of seconds; NaN and infinity fail the comparison."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = math.nan
        if not 0 < value <= maximum:
            raise self._fail(
                key,
                f"must be a number of seconds greater than 0 and at most {maximum:g}",
            )
        return float(value)

    def duration(self, key: str, default: int) -> int:
        value = self._get(key, default)
        seconds: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            seconds = value
        elif isinstance(value, str):
            seconds = parse_duration(value)
        if seconds is None or not 0 <= seconds <= MAX_DURATION_SECONDS:
            raise self._fail(
                key,
                "must be seconds or a duration like 10m, 8h, 30d, at most "
                f"{MAX_DURATION_SECONDS // 86400}d",
            )
        return seconds

    def size(self, key: str, default: int) -> int:
        value = self._get(key, default)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str):
            size = parse_size(value)
            if size is not None:
                return size
        raise self._fail(key, "must be bytes or a size like 500M, 20G")

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "must be a string or a list of strings")
        return tuple(value)

    def file(self, base: Path, key: str, default: str | None = None) -> Path | None:
        value = self.string(key, default)
        return self._path(base, key, value) if value else None

    def files(self, base: Path, key: str) -> tuple[Path, ...]:
        return tuple(self._path(base, key, v) for v in self.strings(key))

    def _path(self, base: Path, key: str, value: str) -> Path:
        if "\0" in value:
            raise self._fail(key, "must not hold a NUL character")
        return (base / os.path.expanduser(value)).resolve()

    def api_url(self, key: str, default: str) -> str | None:
        value = self.string(key, default)
        assert value is not None
        return check_api_url(value, f"{self.path}: {self.name}.{key}")

    def header(self, key: str) -> str | None:
        value = self.string(key)
        if value is not None:
            check_header(value, f"{self.path}: {self.name}.{key}")
        return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"([0-9]{1,12})([smhdw]?)")
_SIZE = re.compile(r"([0-9]{1,15})([kmgt]?)")
_SIZES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(text: str) -> int | None:
    """Seconds in ``90s``, ``10m``, ``8h``, ``30d``, ``2w`` or a plain number."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        return None
    return int(match[1]) * _UNITS.get(match[2], 1)


def parse_size(text: str) -> int | None:
    """Bytes in ``500M``, ``20G``, ``1T`` (powers of 1024) or a plain number."""
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    match = _SIZE.fullmatch(text)
    if match is None:
        return None
    return int(match[1]) * _SIZES[match[2]]


def load_config(directory: Path | None = None) -> Config:
    """Read ``config.toml`` from ``directory`` (default: ``config_dir()``).

    Raises:
        ConfigError: the file is missing, not TOML, or a key has a bad value.
    """
    base = directory or config_dir()
    path = base / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no vault here; run 'jwtfs init' first") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"{path}: not valid TOML ({err}); fix or re-run init"
        ) from err
    return parse_config(path, raw)


def parse_config(path: Path, raw: dict[str, Any]) -> Config:
    """Turn the parsed TOML of ``path`` into a ``Config``.

    Raises:
        ConfigError: a key is missing or has a bad value.
    """
    base = path.parent
    _check_tables(path, raw)
    vault = _Table(path, "vault", raw.get("vault", {}))
    auth = _Table(path, "auth", raw.get("auth", {}))
    ipfs = _Table(path, "ipfs", raw.get("ipfs", {}))
    retention = _Table(path, "retention", raw.get("retention", {}))
    cache = _Table(path, "cache", raw.get("cache", {}))
    backup = _Table(path, "backup", raw.get("backup", {}))

    data_dir = vault.file(base, "data_dir") or default_data_dir()
    master = vault.file(base, "master_key", "master.key")
    if master is None:
        raise ConfigError(
            f"{path}: vault.master_key must name a file (default: master.key)"
        )
    audience = auth.string("audience")
    if not audience:
        raise ConfigError(f"{path}: auth.audience is missing; set it or re-run init")
    auth_config = AuthConfig(
        audience=audience,
        issuers=auth.strings("issuers"),
        leeway=auth.integer(
            "leeway", DEFAULT_LEEWAY_SECONDS, maximum=MAX_LEEWAY_SECONDS
        ),
        key_files=auth.files(base, "keys"),
        jwks_file=auth.file(base, "jwks"),
        hmac_secret_file=auth.file(base, "hmac_secret"),
        revocation_file=auth.file(base, "revocations"),
        signing_key_file=auth.file(base, "signing_key"),
        issuer=auth.string("issuer"),
    )
    if auth_config.hmac_secret_file and (
        auth_config.key_files or auth_config.jwks_file
    ):
        raise ConfigError(
            f"{path}: auth.hmac_secret cannot be combined with auth.keys or auth.jwks; "
            "use one kind of key"
        )
    if not (
        auth_config.key_files or auth_config.jwks_file or auth_config.hmac_secret_file
    ):
        raise ConfigError(f"{path}: auth.keys is empty; name a public key file")
    return Config(
        path=path,
        data_dir=data_dir,
        master_key_file=master,
        auth=auth_config,
        ipfs=IpfsConfig(
            api=ipfs.api_url("api", DEFAULT_IPFS_API),
            authorization=ipfs.header("authorization"),
            timeout=ipfs.seconds("timeout", IpfsConfig.timeout, MAX_TIMEOUT_SECONDS),
            fetch_timeout=ipfs.seconds(
                "fetch_timeout", IpfsConfig.fetch_timeout, MAX_TIMEOUT_SECONDS
            ),
            upload_while_writing=ipfs.switch("upload_while_writing"),
        ),
        retention=RetentionConfig(
            keep_versions=retention.integer(
                "keep_versions", RetentionConfig.keep_versions
            ),
            keep_seconds=retention.duration("keep_for", RetentionConfig.keep_seconds),
        ),
        cache=CacheConfig(max_bytes=cache.size("max_size", 0)),
        backup=BackupConfig(
            interval=backup.duration("interval", BackupConfig.interval)
        ),
    )


def _check_tables(path: Path, raw: dict[str, Any]) -> None:
    known = ", ".join(sorted(KEYS))
    for name, value in raw.items():
        if name in KEYS:
            continue
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: unknown table [{_quoted(name)}] (known: {known})"
            )
        raise ConfigError(
            f"{path}: unknown key {_quoted(name)} (known tables: {known})"
        )


def _quoted(key: str) -> str:
    """A key as TOML writes it, quoted unless bare, so a message stays one line."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def with_environment(config: Config, *, ipfs_api: str | None = None) -> Config:
    """Apply ``IPFS_API``, ``IPFS_API_AUTHORIZATION`` and ``--ipfs-api``.

    The command line wins over the environment, which wins over the file;
    ``none`` or an empty value means the embedded store only.

    Raises:
        ConfigError: a value is bad, as it would be in the file; the message
            names the variable or the option.
    """
    api = config.ipfs.api
    if "IPFS_API" in os.environ:
        api = check_api_url(os.environ["IPFS_API"], "IPFS_API")
    if ipfs_api is not None:
        api = check_api_url(ipfs_api, "--ipfs-api")
    authorization = os.environ.get("IPFS_API_AUTHORIZATION")
    if authorization:
        check_header(authorization, "IPFS_API_AUTHORIZATION")
    else:
        authorization = config.ipfs.authorization
    ipfs = replace(config.ipfs, api=api, authorization=authorization)
    return replace(config, ipfs=ipfs)


_URL_FIX = 'write it like http://127.0.0.1:5001, or "none" for no node'
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_api_url(value: str, where: str) -> str | None:
    """The IPFS API URL ``value``, or None for ``none`` or nothing.

    It must be ``http`` or ``https`` with a host name or IP address, a port
    from 1 to 65535 if it has one, an optional path, no credentials (they go
    in ``ipfs.authorization``), no query or fragment. ``where`` names the
    setting in the message: ``"FILE: ipfs.api"``, ``IPFS_API`` or
    ``--ipfs-api``. A message quotes a bad host or port, never the whole
    value, which may hold a secret.

    Raises:
        ConfigError: the URL breaks one of these rules.
    """
    url = value.strip()
    if url.lower() in ("", "none"):
        return None
    problem = _url_problem(url)
    if problem:
        raise ConfigError(f"{where} {problem}")
    return url


def _url_problem(url: str) -> str | None:
    if not (url.isascii() and url.isprintable()) or " " in url:
        return f"holds a space, control or non-ASCII character; {_URL_FIX}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"is not a valid URL; {_URL_FIX}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"must be an http:// or https:// URL; {_URL_FIX}"
    if "@" in parts.netloc:
        return (
            "must not hold credentials; put them in ipfs.authorization or "
            "IPFS_API_AUTHORIZATION"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return f"must not have a query or fragment; {_URL_FIX}"
    split = _split_netloc(parts.netloc)
    if split is None:
        return f"is not a valid URL; {_URL_FIX}"
    host, port = split
    if not host:
        return f"has no host; {_URL_FIX}"
    if not _valid_host(host):
        return f"has a bad host {host!r}; {_URL_FIX}"
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return f"has a bad port {port!r}; a port is 1 to 65535"
    return None


def _split_netloc(netloc: str) -> tuple[str, str | None] | None:
    """Host and port text (None: no port), or None when brackets do not pair."""
    if netloc.startswith("["):
        host, closed, rest = netloc[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        return host, rest[1:] if rest else None
    if "[" in netloc or "]" in netloc:
        return None
    host, colon, port = netloc.partition(":")
    return host, port if colon else None


def _valid_host(host: str) -> bool:
    """An IP address, or a DNS name; dotted digits must be a whole IPv4 address.

    An IPv6 zone (``fe80::1%25eth0``) is refused: httpx takes it for a name.
    """
    if "%" in host:
        return False
    if ":" in host or re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True
    labels = host.removesuffix(".").split(".")
    return all(_LABEL.fullmatch(label) for label in labels)


def check_header(value: str, where: str) -> None:
    """Refuse an HTTP header value httpx would reject or a server misread.

    Raises:
        ConfigError: ``value`` holds a control or non-ASCII character; the
            message does not quote it, since it is a credential.
    """
    if not (value.isascii() and value.isprintable()):
        raise ConfigError(f"{where} must be printable ASCII, as an HTTP header is")
