"""Which mount and which IPFS node ``status`` and ``flush`` are about.

A running daemon records the node it pins to (``MountRecord.ipfs_api``, after
``IPFS_API`` and ``--ipfs-api``), so these commands ask the node the mount
really uses. Without a running daemon they use ``IPFS_API`` or the config,
as ``jwtfs mount`` would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jwtfs.config import Config
from jwtfs.daemon import MountRecord, normal_path, running_mounts
from jwtfs.errors import ConfigError


@dataclass(frozen=True)
class Target:
    """The vault's running mount (if any) and the node in use (None: none)."""

    config: Config
    mount: MountRecord | None
    api: str | None

    def api_source(self) -> str:
        """Where ``api`` comes from, in words."""
        if self.mount is not None and self.mount.api_recorded:
            return f"the mount at {self.mount.mountpoint}"
        if "IPFS_API" in os.environ:
            return "IPFS_API"
        return f"ipfs.api in {self.config.path}"

    def why_no_node(self) -> str:
        """Why ``api`` is None, naming the setting that made it so."""
        if self.mount is not None and self.mount.api_recorded:
            return f"{self.mount.mountpoint} was mounted without an IPFS node"
        if "IPFS_API" in os.environ:
            return f"IPFS_API is {os.environ['IPFS_API']!r}"
        return f"ipfs.api is empty in {self.config.path}"

    def how_to_add_node(self) -> str:
        """The fix for ``why_no_node``."""
        if self.mount is not None and self.mount.api_recorded:
            return (
                f"run 'jwtfs umount {self.mount.mountpoint}', then mount it with "
                "--ipfs-api URL"
            )
        if "IPFS_API" in os.environ:
            return "set IPFS_API to the node's URL"
        return "set ipfs.api to the node's URL"


def find_target(config: Config, mountpoint: Path | None) -> Target:
    """The mount ``mountpoint`` names, else the vault's running mount if any.

    Raises:
        ConfigError: ``mountpoint`` is not a running mount of this vault.
    """
    mounts = running_mounts(config)
    if mountpoint is not None:
        wanted = normal_path(mountpoint)
        named = [mount for mount in mounts if mount.mountpoint == wanted]
        if not named:
            where = ", ".join(str(mount.mountpoint) for mount in mounts)
            state = f"it is mounted at {where}" if where else "it is not mounted"
            raise ConfigError(
                f"{wanted}: not a mount of the vault in {config.data_dir} "
                f"({state}); name its mountpoint, or none"
            )
        mounts = named
    mount = mounts[0] if mounts else None
    if mount is not None and mount.api_recorded:
        return Target(config, mount, mount.ipfs_api)
    return Target(config, mount, config.ipfs.api)
