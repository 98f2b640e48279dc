"""Encrypted snapshots of the index, pinned like any file, and recovery from one.

A snapshot is a consistent copy of the SQLite index (``VACUUM INTO``),
encrypted into an ordinary ciphertext stream (``docs/FORMAT.md``) under a
fresh file id and pushed to the node, where it is pinned. Its CID
and time are kept in the index's ``meta`` table (``snapshot_cid``,
``snapshot_ns``), so ``jwtfs status`` can show them. With the master key and
that one CID, ``recover`` rebuilds the index on a new machine; the content
then comes from the node as it is read.

The plaintext copy exists only for the moment it is encrypted, in the data
directory next to the index it copies, and is removed at once.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import trio

from jwtfs.blocks.cid import Cid
from jwtfs.blocks.unixfs import build_dag_from_file
from jwtfs.crypto.keys import MasterKey
from jwtfs.crypto.segments import (
    HEADER_SIZE,
    FileCipher,
    Header,
    new_header,
    segment_offset,
    segment_stored_size,
)
from jwtfs.errors import IntegrityError, RemoteError, StoreError
from jwtfs.remote.kubo import KuboClient
from jwtfs.vault.fetch import RemoteReader
from jwtfs.vault.index import Index

log = logging.getLogger(__name__)

# The index is snapshotted at most this often, and only after it changed.
SNAPSHOT_INTERVAL_SECONDS = 60.0
_CHUNK = 1024 * 1024


def encrypt_file(key: MasterKey, plain: Path, target: Path) -> None:
    """Write ``plain`` encrypted as a ciphertext stream to ``target``."""
    header = new_header()
    cipher = FileCipher(key, header)
    size = header.segment_size
    with plain.open("rb") as src, target.open("xb") as dst:
        os.fchmod(dst.fileno(), 0o600)
        dst.write(header.pack())
        index = 0
        while piece := src.read(size):
            dst.write(cipher.encrypt_segment(index, piece))
            index += 1


def decrypt_file(key: MasterKey, stream: Path, target: Path) -> None:
    """Decrypt a ciphertext stream into ``target``.

    Raises:
        IntegrityError: the stream is damaged or was made with another key.
    """
    with stream.open("rb") as src, target.open("xb") as dst:
        os.fchmod(dst.fileno(), 0o600)
        header = Header.unpack(src.read(HEADER_SIZE))
        cipher = FileCipher(key, header)
        stored = segment_stored_size(header.segment_size)
        index = 0
        while True:
            src.seek(segment_offset(header.segment_size, index))
            piece = src.read(stored)
            if not piece:
                break
            dst.write(cipher.decrypt_segment(index, piece))
            index += 1


class SnapshotMismatchError(RemoteError):
    """The node named another CID for a snapshot than the one computed here."""


class Snapshots:
    """Takes snapshots of a live index when it has changed, at most once a minute."""

    def __init__(
        self,
        index: Index,
        key: MasterKey,
        client: KuboClient,
        *,
        interval: float = SNAPSHOT_INTERVAL_SECONDS,
    ) -> None:
        self.index = index
        self.key = key
        self.client = client
        self.interval = interval
        self._seen_changes = -1
        self._last = 0.0

    def seconds_until_due(self) -> float | None:
        """None while the index is as last snapshotted, else seconds to wait."""
        if self.index.total_changes() == self._seen_changes:
            return None
        return max(0.0, self._last + self.interval - time.monotonic())

    def due(self) -> bool:
        return self.seconds_until_due() == 0.0

    async def take(self, workdir: Path) -> Cid:
        """Snapshot, encrypt, push and pin the index; return the snapshot's CID.

        The node's CID must equal the one computed here; otherwise the
        snapshot is not recorded and the one before it stays pinned, since a
        node that names the wrong CID could name a file's.

        Raises:
            StoreError: the copy could not be made.
            RemoteError: the node did not take it.
            SnapshotMismatchError: the node named another CID.
        """
        self._last = time.monotonic()
        changes = self.index.total_changes()
        plain = workdir / f"snapshot.{os.getpid()}.sqlite3"
        stream = workdir / f"snapshot.{os.getpid()}.stream"
        for leftover in (plain, stream):
            leftover.unlink(missing_ok=True)
        try:
            self.index.copy_to(plain)
            await trio.to_thread.run_sync(encrypt_file, self.key, plain, stream)
        finally:
            plain.unlink(missing_ok=True)
        try:
            local = (await trio.to_thread.run_sync(build_dag_from_file, stream)).root
            cid, _ = await self.client.add_stream(stream, pin=True)
        except OSError as err:
            raise StoreError(f"index snapshot: {err.strerror}") from err
        finally:
            stream.unlink(missing_ok=True)
        if cid != local:
            raise SnapshotMismatchError(
                f"the node computed {cid} for snapshot {local}; not recorded"
            )
        previous = self.index.meta("snapshot_cid")
        before = self.index.total_changes()
        self.index.set_meta("snapshot_cid", str(cid))
        self.index.set_meta("snapshot_ns", str(time.time_ns()))
        # Changes made after the copy was taken still count; recording the
        # snapshot itself does not.
        self._seen_changes = changes + (self.index.total_changes() - before)
        if previous and previous != cid and not self.index.cid_in_use(previous):
            await self.client.pin_rm(Cid(previous))
        log.info("index snapshot pinned as %s", cid)
        return cid


async def recover_index(
    key: MasterKey, client: KuboClient, cid: Cid, index_path: Path, *, timeout: float
) -> int:
    """Rebuild the index at ``index_path`` from the snapshot ``cid``.

    Every version is marked as not stored locally, so reads fetch it from the
    node; versions that were not yet pinned when the snapshot was taken are
    marked failed. Returns the number of files recovered.

    Raises:
        StoreError: an index exists already at ``index_path``.
        RemoteError, IntegrityError: the snapshot could not be fetched or
            decrypted (the wrong master key shows up here).
    """
    if index_path.exists():
        raise StoreError(
            f"{index_path}: an index exists already; recover into a new vault"
        )
    reader = RemoteReader(client, timeout=timeout)
    stream = index_path.with_name("recover.stream")
    stream.unlink(missing_ok=True)
    try:
        await reader.download(cid, stream)
        try:
            await trio.to_thread.run_sync(decrypt_file, key, stream, index_path)
        except IntegrityError:
            index_path.unlink(missing_ok=True)
            raise
    finally:
        stream.unlink(missing_ok=True)
    index = Index(index_path)
    try:
        return index.mark_recovered()
    finally:
        index.close()
