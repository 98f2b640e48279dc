"""The pin queue: push every new version to the node, pin it, and let go of old ones.

The queue is the ``versions`` table itself (``state='queued'``), so it
survives restarts. One worker pushes one stream at a time with Kubo's ``add``
(``pin=true``, so the content is pinned as it arrives and a concurrent
``repo/gc`` cannot take it), then compares the CID the node computed with the
one computed locally: a mismatch marks the version ``failed`` and keeps it
local. A node that cannot be reached leaves versions queued; the worker retries
with backoff and never gives up on them. A node that answers with an error is
retried ``MAX_ATTEMPTS`` times before the version is marked ``failed``.

Versions marked ``unpin`` (superseded past retention, or of deleted files) are
unpinned and then forgotten. Once the queue is empty, an encrypted snapshot of
the index is pinned too when it changed (``backup``), at most once a minute.
"""

from __future__ import annotations

import logging
import time

import trio

from jwtfs.blocks.cid import Cid
from jwtfs.errors import NotFoundError, RemoteError, StoreError
from jwtfs.remote.kubo import KuboClient, NodeTimeoutError, NodeUnreachableError
from jwtfs.vault.backup import Snapshots
from jwtfs.vault.index import VersionRow
from jwtfs.vault.vault import Vault

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# A node that is down is probed this often at most; errors back off to this.
UNREACHABLE_RETRY_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 300.0
# Retention and eviction are looked at this often even when nothing happens.
MAINTENANCE_SECONDS = 30.0


class PinQueue:
    """The worker that drains the queue; ``wake()`` after each new version."""

    def __init__(
        self, vault: Vault, client: KuboClient, snapshots: Snapshots | None = None
    ) -> None:
        self.vault = vault
        self.client = client
        self.snapshots = snapshots
        self._wake = trio.Event()
        self._reachable: bool | None = None

    def wake(self) -> None:
        self._wake.set()

    def retry_now(self) -> None:
        """Forget backoff times and push at once (``jwtfs flush``)."""
        self.vault.index.reset_retry_times()
        self.wake()

    async def run(self) -> None:
        index = self.vault.index
        index.requeue_interrupted()
        index.queue_local_versions()
        while True:
            await self.drain()
            await self.unpin_released()
            await self._snapshot_if_due()
            await self._sleep()

    async def _snapshot_if_due(self) -> None:
        if self.snapshots is None or not self.snapshots.due():
            return
        if self.vault.index.pending_pins()[0]:
            return
        try:
            await self.snapshots.take(self.vault.paths.staging)
        except (NodeUnreachableError, NodeTimeoutError) as err:
            self._node_state(False, str(err))
        except (RemoteError, StoreError) as err:
            log.warning("index snapshot failed: %s", err)

    async def _sleep(self) -> None:
        delay = MAINTENANCE_SECONDS
        retry = self.vault.index.next_retry_ns()
        if retry is not None:
            delay = min(delay, max(0.0, (retry - time.time_ns()) / 1e9))
        snapshot = (
            None if self.snapshots is None else self.snapshots.seconds_until_due()
        )
        if snapshot is not None:
            delay = min(delay, snapshot)
        with trio.move_on_after(delay):
            await self._wake.wait()
        self._wake = trio.Event()

    async def drain(self) -> None:
        """Push queued versions until none is due or the node is unreachable."""
        while True:
            version = self.vault.index.next_pin_work(time.time_ns())
            if version is None or not await self._push(version):
                return

    async def _push(self, version: VersionRow) -> bool:
        index = self.vault.index
        try:
            path = self.vault.store.stream_path(Cid(version.cid))
        except NotFoundError:
            index.set_pin_state(version.id, "failed", reason="stream missing locally")
            log.error("pin failed: stream %s is missing locally", version.cid)
            return True
        index.set_pin_state(version.id, "pinning")
        try:
            cid, _ = await self.client.add_stream(path, pin=True)
        except (NodeUnreachableError, NodeTimeoutError) as err:
            self._node_state(False, str(err))
            retry = time.time_ns() + int(UNREACHABLE_RETRY_SECONDS * 1e9)
            index.set_pin_state(version.id, "queued", next_try_ns=retry)
            return False
        except RemoteError as err:
            self._node_state(True)
            self._give_up_or_retry(version, str(err))
            return True
        self._node_state(True)
        current = index.get_version(version.id)
        if current is None or current.state == "unpin":
            return True
        if cid != version.cid:
            index.set_pin_state(version.id, "failed", reason=f"node computed {cid}")
            log.error(
                "pin failed: the node computed CID %s for stream %s; kept locally",
                cid,
                version.cid,
            )
            return True
        index.set_pin_state(version.id, "pinned")
        log.debug("pinned %s", cid)
        return True

    def _give_up_or_retry(self, version: VersionRow, reason: str) -> None:
        attempts = version.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            self.vault.index.set_pin_state(
                version.id, "failed", reason=reason, attempts=attempts
            )
            log.error(
                "pin failed: %s after %d attempts: %s", version.cid, attempts, reason
            )
            return
        backoff = min(MAX_BACKOFF_SECONDS, 2.0**attempts)
        log.info(
            "pushing %s failed (%s); retry in %.0f s", version.cid, reason, backoff
        )
        self.vault.index.set_pin_state(
            version.id,
            "queued",
            reason=reason,
            attempts=attempts,
            next_try_ns=time.time_ns() + int(backoff * 1e9),
        )

    async def unpin_released(self) -> None:
        """Unpin versions marked ``unpin``; forget them once the node agrees."""
        for version in self.vault.index.versions_to_unpin():
            try:
                await self.client.pin_rm(Cid(version.cid))
            except (NodeUnreachableError, NodeTimeoutError) as err:
                self._node_state(False, str(err))
                return
            except RemoteError as err:
                log.warning("unpinning %s failed: %s", version.cid, err)
                continue
            self.vault.forget_version(version)

    def _node_state(self, reachable: bool, reason: str = "") -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        index = self.vault.index
        index.set_meta("node_state", "reachable" if reachable else "unreachable")
        index.set_meta("node_since", str(time.time_ns()))
        if reachable:
            log.info("IPFS node reachable; pushing the backlog")
        else:
            files, size = index.backlog()
            log.warning(
                "IPFS node unreachable (%s); %d files (%d bytes) wait to be pinned",
                reason,
                files,
                size,
            )
