"""Mount lifecycle: checks before mounting, the serving loop, signals, readiness.

``jwtfs mount`` checks everything a user can get wrong first (mountpoint, token
file, keys, ``/dev/fuse``), so a mistake is one line and exit code 2 with
nothing changed. Without ``--foreground`` it starts itself again in the
background and returns once the mount answers, reported through a pipe; with
``NOTIFY_SOCKET`` set, readiness also goes to systemd.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from jwtfs.auth.keyset import KeySet
from jwtfs.auth.sources import TokenSource, check_token_file
from jwtfs.auth.tokens import Verifier
from jwtfs.config import Config, runtime_dir
from jwtfs.crypto.keys import MASTER_KEY_SIZE, MasterKey
from jwtfs.crypto.wrapping import open_master_key
from jwtfs.errors import ConfigError, JwtfsError
from jwtfs.fs import session
from jwtfs.fs.operations import Operations
from jwtfs.remote.kubo import KuboClient
from jwtfs.vault.backup import Snapshots
from jwtfs.vault.fetch import RemoteReader
from jwtfs.vault.index import Index
from jwtfs.vault.layout import Paths
from jwtfs.vault.pins import MAINTENANCE_SECONDS, UNREACHABLE_RETRY_SECONDS, PinQueue
from jwtfs.vault.vault import Vault

log = logging.getLogger(__name__)

READY = b"READY\n"
UNMOUNT_WAIT_SECONDS = 60.0
STATUS_SECONDS = 5.0


@dataclass(frozen=True)
class MountRequest:
    """What the user asked for, checked."""

    config: Config
    mountpoint: Path
    token_file: Path | None
    env_token: str | None
    key: MasterKey
    allow_other: bool = False


def setup_logging(verbose: bool = False, *, quiet: bool = False) -> None:
    """Log lines to stderr, where a terminal or journald picks them up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(
        logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    )
    # httpx logs every URL at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def vault_paths(config: Config) -> Paths:
    return Paths(
        index=config.index_file, store=config.store_dir, staging=config.staging_dir
    )


def check_mount_request(
    config: Config,
    mountpoint: Path,
    token_file: Path | None,
    env_token: str | None,
    *,
    key: MasterKey | None = None,
) -> tuple[MountRequest, list[str]]:
    """Check a mount request; return it with warnings for the user.

    Raises:
        ConfigError: a one-line reason and fix (mountpoint missing, not empty,
            already mounted; token file missing or malformed; key file unsafe;
            no ``/dev/fuse``).
    """
    warnings: list[str] = []
    mountpoint = normal_path(mountpoint)
    _check_mountpoint(mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise ConfigError("/dev/fuse: missing; load the fuse module (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise ConfigError("/dev/fuse: not accessible; add yourself to the fuse group")
    key = key or open_master_key(config.master_key_file)
    KeySet.from_config(config.auth)
    verifier = Verifier(config.auth)
    if token_file is not None:
        # Absolute, but symlinks kept: a token file that is a symlink is
        # followed anew on every change, so swapping its target takes effect.
        token_file = Path(os.path.abspath(token_file.expanduser()))
        warnings += check_token_file(token_file)
    if token_file is None and not env_token:
        warnings.append(
            "no token: nothing in the mount is readable until one is given "
            "(--token-file FILE or JWTFS_TOKEN)"
        )
    elif not TokenSource(verifier, token_file, env_token).has_valid_token():
        warnings.append(
            "no valid token yet: reads are refused until one is given "
            "('jwtfs token inspect FILE' says why)"
        )
    _check_vault(config, key.fingerprint())
    return MountRequest(config, mountpoint, token_file, env_token, key), warnings


def normal_path(path: Path) -> Path:
    """An absolute path without ``..`` or symlinks, for messages and records."""
    return Path(os.path.realpath(path.expanduser()))


def _check_mountpoint(mountpoint: Path) -> None:
    try:
        if not mountpoint.exists():
            raise ConfigError(
                f"{mountpoint}: mountpoint does not exist; create it with mkdir"
            )
        if not mountpoint.is_dir():
            raise ConfigError(f"{mountpoint}: mountpoint is not a directory")
        if os.path.ismount(mountpoint):
            raise ConfigError(
                f"{mountpoint}: already mounted; run 'jwtfs umount {mountpoint}'"
            )
        if any(mountpoint.iterdir()):
            raise ConfigError(
                f"{mountpoint}: mountpoint is not empty; use an empty directory"
            )
    except OSError as err:
        if err.errno == errno.ENOTCONN:
            raise ConfigError(
                f"{mountpoint}: a mount whose daemon died is still attached; "
                f"run 'jwtfs umount {mountpoint}'"
            ) from None
        raise ConfigError(f"{mountpoint}: {err.strerror}") from err


def _check_vault(config: Config, key_fingerprint: str) -> None:
    if not config.index_file.exists():
        raise ConfigError(f"{config.index_file}: no index; run 'jwtfs init'")
    index = Index(config.index_file, readonly=True, untouched=True)
    try:
        expected = index.meta("key_fingerprint")
    finally:
        index.close()
    if expected is not None and expected != key_fingerprint:
        raise ConfigError(
            f"{config.master_key_file}: this is not the master key of the vault in "
            f"{config.data_dir} (key {key_fingerprint}, vault {expected}); "
            "restore the right key file"
        )
    where = [str(m) for m in running_mountpoints(config)]
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(vault_lock(config))
        except ConfigError:
            place = f" at {', '.join(where)}" if where else ""
            raise ConfigError(
                f"{config.data_dir}: this vault is already mounted{place}; "
                "unmount it first"
            ) from None


# The registry of running mounts


def _record_path(mountpoint: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
    return runtime_dir() / f"mount-{digest}.json"


@dataclass(frozen=True)
class MountRecord:
    """What a running daemon wrote about itself in the runtime directory.

    ``ipfs_api`` is the node it pins to (None: none), after ``IPFS_API`` and
    ``--ipfs-api``, so ``status`` and ``flush`` ask the node it really uses;
    ``api_recorded`` is False for a record that does not say (written by an
    older jwtfs). The ``Authorization`` value is never recorded.
    ``started_ns`` tells the daemon's own observations from older ones.
    """

    pid: int
    mountpoint: Path
    data_dir: Path
    ipfs_api: str | None
    api_recorded: bool
    started_ns: int


def _write_record(request: MountRequest) -> Path:
    path = _record_path(request.mountpoint)
    record = {
        "pid": os.getpid(),
        "mountpoint": str(request.mountpoint),
        "data_dir": str(request.config.data_dir),
        "ipfs_api": request.config.ipfs.api,
        "started_ns": time.time_ns(),
    }
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot record the mount ({err.strerror}); make "
            f"{path.parent} a writable directory or set XDG_RUNTIME_DIR"
        ) from err
    return path


def _parse_record(record: object) -> MountRecord | None:
    if not isinstance(record, dict):
        return None
    pid, mountpoint = record.get("pid"), record.get("mountpoint")
    data_dir, api = record.get("data_dir"), record.get("ipfs_api")
    started = record.get("started_ns", 0)
    if not isinstance(pid, int) or not isinstance(mountpoint, str):
        return None
    if not isinstance(data_dir, str) or not isinstance(started, int):
        return None
    if api is not None and not isinstance(api, str):
        return None
    return MountRecord(
        pid, Path(mountpoint), Path(data_dir), api, "ipfs_api" in record, started
    )


def read_record(mountpoint: Path) -> dict[str, object] | None:
    try:
        record = json.loads(_record_path(mountpoint.absolute()).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def running_mounts(config: Config) -> list[MountRecord]:
    """The records of live daemons serving this vault."""
    records = []
    for path in runtime_dir().glob("mount-*.json"):
        try:
            record = _parse_record(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        if record is None or record.data_dir != config.data_dir:
            continue
        if _alive(record.pid):
            records.append(record)
    return records


def running_mountpoints(config: Config) -> list[Path]:
    """Where this vault is mounted now."""
    return [record.mountpoint for record in running_mounts(config)]


@dataclass(frozen=True)
class Backlog:
    """What ``flush`` waits for, as the process that pushes last saw it."""

    versions: int
    bytes: int
    # Since when (ns) the node has not been reached, or None: it answered, or
    # it was not tried yet.
    unreachable_since_ns: int | None = None


def flush_backlog(
    config: Config,
    *,
    mount: MountRecord | None,
    wait: bool,
    timeout: float,
    progress: Callable[[Backlog], None] | None = None,
) -> int:
    """Push queued versions now; return how many are still waiting.

    The daemon of ``mount`` is asked to push (SIGUSR1) and watched; without
    one, the versions are pushed by this process, to ``config``'s node. With
    ``wait``, return once nothing is queued or ``timeout`` seconds (0: no
    limit) have passed.

    Raises:
        ConfigError: without ``mount``, no node is configured, or the vault
            was mounted meanwhile.
        JwtfsError: the daemon stopped before nothing was queued.
    """
    if mount is not None:
        # Queued here, so the wait counts them before the daemon looks.
        _requeue_failed(config)
        with contextlib.suppress(ProcessLookupError):
            os.kill(mount.pid, signal.SIGUSR1)
        return _wait_for_daemon(config, mount, wait, timeout, progress)
    if config.ipfs.api is None:
        raise ConfigError(f"{config.path}: no IPFS node configured to push to")
    with vault_lock(config):
        key = open_master_key(config.master_key_file)
        vault = Vault(vault_paths(config), key, retention=config.retention)
        try:
            left: int = trio.run(_push_here, vault, config, wait, timeout, progress)
            return left
        finally:
            vault.close()


def count_failed(config: Config) -> int:
    """Versions the pin queue has marked failed."""
    index = Index(config.index_file, readonly=True)
    try:
        return len(index.failed_versions())
    finally:
        index.close()


def _requeue_failed(config: Config) -> None:
    index = Index(config.index_file)
    try:
        index.requeue_failed()
    finally:
        index.close()


def _backlog(index: Index, since_ns: int) -> Backlog:
    """The backlog, and the node's state if recorded at ``since_ns`` or later
    (an older record is another process's, about a node it may not share)."""
    versions, size = index.pending_pins()
    state, since = index.meta("node_state"), index.meta("node_since")
    if state == "unreachable" and since is not None and int(since) >= since_ns:
        return Backlog(versions, size, int(since))
    return Backlog(versions, size)


def _wait_for_daemon(
    config: Config,
    mount: MountRecord,
    wait: bool,
    timeout: float,
    progress: Callable[[Backlog], None] | None,
) -> int:
    deadline = time.monotonic() + timeout if timeout > 0 else None
    while True:
        index = Index(config.index_file, readonly=True)
        try:
            backlog = _backlog(index, mount.started_ns)
        finally:
            index.close()
        if progress is not None:
            progress(backlog)
        if not wait or backlog.versions == 0:
            return backlog.versions
        if deadline is not None and time.monotonic() > deadline:
            return backlog.versions
        if not _alive(mount.pid):
            raise JwtfsError(
                f"{mount.mountpoint}: its daemon stopped before the backlog was "
                "pinned; mount it again to push the rest"
            )
        time.sleep(0.2)


async def _push_here(
    vault: Vault,
    config: Config,
    wait: bool,
    timeout: float,
    progress: Callable[[Backlog], None] | None,
) -> int:
    started_ns = time.time_ns()
    client = pin_client(config)
    assert client is not None
    async with client:
        queue = PinQueue(vault, client)
        vault.index.requeue_interrupted()
        vault.index.queue_local_versions()
        vault.index.requeue_failed()
        vault.index.reset_retry_times()
        with trio.move_on_after(timeout if timeout > 0 else math.inf):
            while True:
                await queue.drain()
                await queue.unpin_released()
                backlog = _backlog(vault.index, started_ns)
                if progress is not None:
                    progress(backlog)
                if backlog.versions == 0 or not wait:
                    break
                await trio.sleep(UNREACHABLE_RETRY_SECONDS)
    return vault.index.pending_pins()[0]


@contextlib.contextmanager
def vault_lock(config: Config) -> Iterator[None]:
    """One daemon per vault: two would write one index behind each other's back."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(config.data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{config.data_dir}: this vault is already mounted elsewhere; "
                "unmount it first"
            ) from None
        yield
    finally:
        os.close(fd)


# Serving


def _notify_systemd(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        contextlib.suppress(OSError),
    ):
        sock.sendto(message.encode(), address)


def serve(request: MountRequest, ready_fd: int | None) -> int:
    """Mount and serve until unmounted or signalled; return the exit code.

    Raises:
        ConfigError: the node's settings are unusable (before mounting), or the
            mount's record cannot be written (after, and then it is unmounted).
        JwtfsError: anything else that stops the daemon; the mount is detached
            before it goes on, so no dead mount stays behind.
    """
    # A parent that had these blocked passes the mask on; unmount needs them.
    signal.pthread_sigmask(
        signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    )
    config = request.config
    key = request.key
    verifier = Verifier(config.auth)
    tokens = TokenSource(verifier, request.token_file, request.env_token)
    # Made before mounting, so a node setting the client refuses leaves
    # nothing attached.
    client = pin_client(config)
    with vault_lock(config):
        vault = Vault(
            vault_paths(config), key, retention=config.retention, cache=config.cache
        )
        try:
            operations = Operations(vault, tokens)
            _serve_mounted(request, operations, client, ready_fd)
        finally:
            vault.close()
    log.info("unmounted %s", request.mountpoint)
    return 0


def _serve_mounted(
    request: MountRequest,
    operations: Operations,
    client: KuboClient | None,
    ready_fd: int | None,
) -> None:
    session.mount(operations, request.mountpoint, allow_other=request.allow_other)
    ended = False
    record: Path | None = None
    try:
        record = _write_record(request)
        ended = trio.run(_main, request, operations, client, ready_fd)
    finally:
        # Unless the kernel ended the session (someone unmounted), detach the
        # mount here: after a signal, and after any failure, even one before
        # the mount was ready, which would otherwise leave a mount whose every
        # access fails with ENOTCONN and which blocks the next mount.
        session.close(unmount=not ended)
        if record is not None:
            record.unlink(missing_ok=True)


def pin_client(config: Config) -> KuboClient | None:
    if config.ipfs.api is None:
        return None
    return KuboClient(
        config.ipfs.api,
        authorization=config.ipfs.authorization,
        timeout=config.ipfs.timeout,
    )


async def _main(
    request: MountRequest,
    operations: Operations,
    client: KuboClient | None,
    ready_fd: int | None,
) -> bool:
    """Serve until unmounted or signalled; return whether the kernel ended it."""
    vault = operations.vault
    ended = False
    try:
        queue = _start_pinning(request, vault, client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(operations.watch_tokens)
            nursery.start_soon(_on_signals, nursery.cancel_scope, queue)
            nursery.start_soon(_announce_ready, request.mountpoint, ready_fd)
            nursery.start_soon(_maintain, vault)
            if os.environ.get("NOTIFY_SOCKET"):
                nursery.start_soon(_report_status, vault)
            if queue is not None:
                nursery.start_soon(queue.run)
            await session.serve()
            ended = True
            nursery.cancel_scope.cancel()
    finally:
        _notify_systemd("STOPPING=1")
        with trio.CancelScope(shield=True):
            try:
                await vault.commit_all()
            finally:
                if client is not None:
                    await client.aclose()
    return ended


def _start_pinning(
    request: MountRequest, vault: Vault, client: KuboClient | None
) -> PinQueue | None:
    config = request.config
    if client is None:
        log.info("mounted %s; no IPFS node configured", request.mountpoint)
        return None
    vault.remote = RemoteReader(client, timeout=config.ipfs.fetch_timeout)
    snapshots = Snapshots(
        vault.index, vault.key, client, interval=config.backup.interval
    )
    queue = PinQueue(vault, client, snapshots)
    vault.on_new_version = queue.wake
    if config.ipfs.uploads_while_writing():
        vault.push_growing = queue.push_growing
    log.info("mounted %s; pinning to %s", request.mountpoint, config.ipfs.api)
    return queue


async def _maintain(vault: Vault) -> None:
    while True:
        await trio.sleep(MAINTENANCE_SECONDS)
        try:
            vault.maintain()
        except JwtfsError as err:
            log.warning("maintenance failed: %s", err)


async def _report_status(vault: Vault) -> None:
    """Tell systemd how large the pin backlog is (``systemctl status`` shows it)."""
    while True:
        await trio.sleep(STATUS_SECONDS)
        versions, size = vault.index.pending_pins()
        state = (
            f"{versions} versions ({size} bytes) to pin" if versions else "no backlog"
        )
        _notify_systemd(f"STATUS=serving; {state}")


async def _on_signals(scope: trio.CancelScope, queue: PinQueue | None) -> None:
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    with trio.open_signal_receiver(*wanted) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                if queue is not None:
                    queue.retry_now()
                continue
            name = signal.Signals(signum).name
            log.info("%s received; committing and unmounting", name)
            scope.cancel()
            return


async def _announce_ready(mountpoint: Path, ready_fd: int | None) -> None:
    # The stat waits for the mount to answer; should serving fail first, it
    # would wait until the unmount that comes only after this task ends, so
    # a cancellation abandons it.
    await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    _notify_systemd("READY=1\nSTATUS=serving")
    if ready_fd is not None:
        os.write(ready_fd, READY)
        os.close(ready_fd)


def read_key_from(fd: int) -> MasterKey:
    """The master key a parent ``jwtfs mount`` handed over through a pipe."""
    with os.fdopen(fd, "rb") as pipe:
        return MasterKey(pipe.read(MASTER_KEY_SIZE))


def start_background(argv: list[str], log_path: Path, key: MasterKey) -> None:
    """Start ``jwtfs mount --foreground`` detached; return once it serves.

    Raises:
        JwtfsError: the daemon exited before the mount was ready; the message
            holds its last log line.
    """
    read_end, write_end = os.pipe()
    # The key goes through a pipe, so a wrapped key is unwrapped once, here,
    # and nothing secret reaches the command line or the disk.
    key_read, key_write = os.pipe()
    os.write(key_write, key.raw)
    os.close(key_write)
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        os.fchmod(log_file.fileno(), 0o600)
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jwtfs",
                *argv,
                "--foreground",
                "--ready-fd",
                str(write_end),
                "--key-fd",
                str(key_read),
            ],
            pass_fds=(write_end, key_read),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            cwd="/",
        )
    os.close(write_end)
    os.close(key_read)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read(len(READY))
    if answer == READY:
        return
    child.wait()
    reason = _last_line(log_path).removeprefix("jwtfs: ")
    if child.returncode == 2:
        raise ConfigError(reason)
    raise JwtfsError(reason or f"daemon exited with status {child.returncode}")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def unmount(mountpoint: Path) -> None:
    """Ask the daemon serving ``mountpoint`` to commit and unmount; wait for it.

    Raises:
        ConfigError: nothing is mounted there.
        JwtfsError: the daemon did not finish in time.
    """
    mountpoint = normal_path(mountpoint)
    record = read_record(mountpoint)
    pid = record.get("pid") if record else None
    if isinstance(pid, int) and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + UNMOUNT_WAIT_SECONDS
        while _alive(pid):
            if time.monotonic() > deadline:
                raise JwtfsError(f"{mountpoint}: daemon {pid} did not stop in time")
            time.sleep(0.05)
        return
    if not _is_mounted(mountpoint):
        raise ConfigError(f"{mountpoint}: not mounted")
    # No daemon: a mount left behind by one that died, or someone else's.
    result = subprocess.run(
        ["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True
    )
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["fusermount3 failed"]
        raise JwtfsError(
            f"{mountpoint}: cannot unmount ({detail[0]}); close files and leave "
            "directories in it, then retry"
        )


def _is_mounted(mountpoint: Path) -> bool:
    try:
        return os.path.ismount(mountpoint) or _listed_in_proc_mounts(mountpoint)
    except OSError:
        return True


def _listed_in_proc_mounts(mountpoint: Path) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(
            line.split()[1] == str(mountpoint) for line in mounts if line.strip()
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as status:
            return status.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False
