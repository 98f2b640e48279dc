"""Where a vault keeps its index, store and staging area, and how one is made."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from jwtfs.vault.index import Index


@dataclass(frozen=True)
class Paths:
    """Where a vault keeps its index, store and staging area."""

    index: Path
    store: Path
    staging: Path


def prepare_directories(paths: Paths) -> None:
    """Create the data directory, the store and the staging area (mode 0700)."""
    for directory in (paths.index.parent, paths.store, paths.staging):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The daemon's lock file exists from the start, so a mount refused for a
    # bad argument leaves the data directory exactly as it was.
    (paths.index.parent / "lock").touch(mode=0o600)


def initialize(paths: Paths, *, uid: int, gid: int, key_fingerprint: str) -> str:
    """Create the data directories and an empty index; return the vault id.

    Raises:
        StoreError: the index could not be created.
    """
    prepare_directories(paths)
    vault_id = str(uuid.uuid4())
    index = Index(paths.index)
    try:
        index.create_schema(
            uid=uid, gid=gid, vault_id=vault_id, key_fingerprint=key_fingerprint
        )
    finally:
        index.close()
    return vault_id
