"""A throwaway vault with real mounts, for tests and scripts.

``VaultHarness`` runs the real ``jwtfs`` command in subprocesses with its own
XDG directories, so nothing touches the user's vault. ``mount()`` returns once
the daemon reports the mount ready (``jwtfs mount`` waits for that itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class VaultHarness:
    """A vault in ``root``: config, data, runtime dirs, a mountpoint."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_home = root / "config"
        self.data_home = root / "data"
        self.runtime = root / "run"
        self.mnt = root / "mnt"
        for d in (self.config_home, self.data_home, self.runtime, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        self.runtime.chmod(0o700)
        self.token_file = root / "token.jwt"
        self.env = dict(os.environ)
        self.env.update(
            XDG_CONFIG_HOME=str(self.config_home),
            XDG_DATA_HOME=str(self.data_home),
            XDG_RUNTIME_DIR=str(self.runtime),
        )
        self.env.pop("JWTFS_TOKEN", None)

    @property
    def config_dir(self) -> Path:
        return self.config_home / "jwtfs"

    @property
    def data_dir(self) -> Path:
        return self.data_home / "jwtfs"

    def jwtfs(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "jwtfs", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"jwtfs {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def init(self, *, ipfs_api: str | None = None) -> None:
        """Create the vault; it pins to ``ipfs_api``, or to no node at all."""
        self.jwtfs("init")
        self.set_config("ipfs", "api", ipfs_api or "")

    def set_config(
        self, table: str, key: str, value: str | int | bool, *, raw: bool = False
    ) -> None:
        """Set one key of config.toml (the file jwtfs init wrote).

        With ``raw``, ``value`` is written as it is, as TOML text.
        """
        path = self.config_dir / "config.toml"
        lines = path.read_text().splitlines()
        if isinstance(value, bool):
            rendered = f"{key} = {'true' if value else 'false'}"
        elif raw or isinstance(value, int):
            rendered = f"{key} = {value}"
        else:
            rendered = f'{key} = "{value}"'
        start = lines.index(f"[{table}]") if f"[{table}]" in lines else None
        if start is None:
            lines += ["", f"[{table}]", rendered]
        else:
            end = next(
                (i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
                len(lines),
            )
            for i in range(start + 1, end):
                if lines[i].split("=")[0].strip() == key:
                    lines[i] = rendered
                    break
            else:
                lines.insert(start + 1, rendered)
        path.write_text("\n".join(lines) + "\n")

    def issue(
        self,
        *,
        read: tuple[str, ...] = (),
        write: tuple[str, ...] = (),
        ttl: str = "1h",
        sub: str = "test",
    ) -> str:
        args = ["token", "issue", "--ttl", ttl, "--sub", sub]
        for p in read:
            args += ["--read", p]
        for p in write:
            args += ["--write", p]
        return self.jwtfs(*args).stdout.strip()

    def set_token(self, token: str) -> None:
        tmp = self.token_file.with_suffix(".tmp")
        tmp.write_text(token + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.token_file)

    def mount(
        self, *extra: str, token_file: bool = True, env: dict[str, str] | None = None
    ) -> None:
        args = ["mount", str(self.mnt)]
        if token_file:
            args += ["--token-file", str(self.token_file)]
        self.jwtfs(*args, *extra, env=env)
        assert os.path.ismount(self.mnt)

    def daemon_pid(self) -> int:
        for record in self.runtime.glob("jwtfs/mount-*.json"):
            data = json.loads(record.read_text())
            if data["mountpoint"] == str(self.mnt):
                return int(data["pid"])
        raise AssertionError("no running daemon recorded")

    def umount(self) -> None:
        self.jwtfs("umount", str(self.mnt))
        assert not os.path.ismount(self.mnt)

    def remount(self) -> None:
        self.umount()
        self.mount()

    def kill9(self) -> None:
        """SIGKILL the daemon, then clear the dead mount."""
        pid = self.daemon_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        for record in self.runtime.glob("jwtfs/mount-*.json"):
            record.unlink()

    def attached(self) -> bool:
        """Whether the kernel lists the mount, a dead one too (ismount misses it)."""
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == str(self.mnt) for line in mounts)

    def cleanup(self) -> None:
        if os.path.ismount(self.mnt) or self.attached():
            result = self.jwtfs("umount", str(self.mnt), check=False)
            if result.returncode != 0 or self.attached():
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)

    def log_text(self) -> str:
        path = self.data_dir / "mount.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_pinned(self, timeout: float = 60) -> None:
        """Push the queue now and return once nothing waits (``flush --wait``)."""
        self.jwtfs("flush", "--wait", "--timeout", str(timeout), timeout=timeout + 30)

    def stream_file(self, cid: str) -> Path:
        """Where the embedded store keeps the local copy of stream ``cid``."""
        return self.data_dir / "store" / "streams" / cid[-2:] / cid

    def drop_local_cache(self) -> int:
        """Evict every pinned stream with the vault's own eviction, unmounted.

        The daemon evicts only every few tens of seconds; this runs the same
        ``Vault.evict`` in a child process with a cache limit of one byte and
        returns how many streams it dropped. The vault must not be mounted.
        """
        script = (
            "from jwtfs.config import CacheConfig, load_config\n"
            "from jwtfs.crypto.keys import load_master_key\n"
            "from jwtfs.daemon import vault_lock, vault_paths\n"
            "from jwtfs.remote.kubo import KuboClient\n"
            "from jwtfs.vault.fetch import RemoteReader\n"
            "from jwtfs.vault.vault import Vault\n"
            "config = load_config()\n"
            "assert config.ipfs.api, 'no node configured: nothing can be evicted'\n"
            "reader = RemoteReader(KuboClient(config.ipfs.api), timeout=1.0)\n"
            "with vault_lock(config):\n"
            "    key = load_master_key(config.master_key_file)\n"
            "    vault = Vault(vault_paths(config), key,"
            " cache=CacheConfig(max_bytes=1), remote=reader)\n"
            "    try:\n"
            "        print(vault.evict())\n"
            "    finally:\n"
            "        vault.close()\n"
        )
        assert not os.path.ismount(self.mnt), "unmount before dropping the cache"
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(f"evicting failed: {result.stderr}")
        return int(result.stdout)

    def log_lines(self, *levels: str) -> list[str]:
        """The daemon's log lines at any of ``levels``, e.g. ``"ERROR"``."""
        return [
            line
            for line in self.log_text().splitlines()
            if any(f" {level} " in line for level in levels)
        ]


def tree_state(*roots: Path) -> dict[str, tuple[int, str]]:
    """Mode and SHA-256 of every file under ``roots``, to show nothing changed."""
    state = {}
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                p = Path(dirpath) / name
                state[str(p)] = (
                    os.stat(p).st_mode,
                    hashlib.sha256(p.read_bytes()).hexdigest(),
                )
    return state


def one_line_error(
    result: subprocess.CompletedProcess[str], *names: str, fix: bool = True
) -> str:
    """Check a user's mistake was refused: exit 2, one line naming ``names``.

    With ``fix``, the line also says how to fix it, after a "; ".
    """
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("jwtfs: ")
    for name in names:
        assert name in line, line
    if fix:
        _, sep, how = line.partition("; ")
        assert sep and how, f"no fix named: {line}"
    return line


def new_vault(root: Path, api: str) -> VaultHarness:
    """An initialised vault pinning to ``api``, with a token for everything."""
    harness = VaultHarness(root)
    harness.init(ipfs_api=api)
    harness.set_token(harness.issue(read=("/**",), write=("/**",)))
    return harness
