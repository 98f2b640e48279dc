"""The pin queue: push every new version to the node, pin it, and let go of old ones.

The queue is the ``versions`` table itself (``state='queued'``), so it
survives restarts. One worker pushes one stream at a time with Kubo's ``add``
(``pin=true``, so the content is pinned as it arrives and a concurrent
``repo/gc`` cannot take it), then compares the CID the node computed with the
one computed locally: a mismatch marks the version ``failed`` and keeps it
local, and only ``jwtfs flush`` tries it again. A node that cannot be reached
leaves versions queued; the worker retries with backoff and never gives up on
them. Nor on a node that answers with errors (a proxy's 502 while Kubo
restarts): after ``MAX_ATTEMPTS`` such answers the version shows as
``failed`` with the reason, and is still retried, at most
``MAX_BACKOFF_SECONDS`` apart.

A new file written front to back can be uploaded while it is written
(``uploads``): ``push_growing`` starts its ``add`` beside the worker, at most
``GROWING_UPLOADS`` at once, unpinned; the version it ends in is pinned
(``pin/add``) once the file is closed, the rest has arrived and the node's CID
matches. Whatever goes wrong on that path (the stream changed, the node
failed, the CIDs differ) puts the version back in the queue, so the worker's
push stays the one that decides.

Versions marked ``unpin`` (superseded past retention, or of deleted files) are
unpinned and then forgotten. Once the queue is empty, an encrypted snapshot of
the index is pinned too when it changed (``backup``), at most once a minute.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import trio

from jwtfs.blocks.cid import Cid
from jwtfs.errors import NotFoundError, RemoteError, StoreError
from jwtfs.remote.kubo import KuboClient, NodeTimeoutError, NodeUnreachableError
from jwtfs.vault.backup import SnapshotMismatchError, Snapshots
from jwtfs.vault.schema import NEVER_NS, VersionRow
from jwtfs.vault.uploads import GrowingStream, UploadAbandonedError
from jwtfs.vault.vault import Vault

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# A node that is down is probed this often at most; errors back off to this.
UNREACHABLE_RETRY_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 300.0
# Retention and eviction are looked at this often even when nothing happens.
MAINTENANCE_SECONDS = 30.0
# Uploads of files still being written, beside the worker's own push: enough
# for a copy of two large files at once, few enough not to flood the node.
GROWING_UPLOADS = 2


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
        self._nursery: trio.Nursery | None = None
        self._growing: set[GrowingStream] = set()

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
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    await self._round()
            finally:
                self._nursery = None

    async def _round(self) -> None:
        """One pass of the queue's work, then a wait. A fault nobody expected
        is logged with its traceback and the queue goes on after a pause:
        the mount keeps serving, and what was queued stays queued."""
        try:
            await self.drain()
            self._requeue_orphans()
            await self.unpin_released()
            await self._snapshot_if_due()
        except Exception:
            log.exception(
                "the pin queue failed; it tries again in %.0f s", MAINTENANCE_SECONDS
            )
            await trio.sleep(MAINTENANCE_SECONDS)
            return
        await self._sleep()

    def _requeue_orphans(self) -> None:
        """A version ``pinning`` that no push is working on goes back in the
        queue; it would otherwise wait for the next mount."""
        working = [s.version_id for s in self._growing if s.version_id is not None]
        if count := self.vault.index.requeue_interrupted(keep=working):
            log.warning("%d versions were left half-pushed; queued again", count)
            self.wake()

    def push_growing(self, path: Path) -> GrowingStream | None:
        """Start uploading the staging stream at ``path`` while it is written.

        Returns None (the version is then pushed after its commit) when the
        queue is not running, the node is known to be down, or enough uploads
        are under way already.
        """
        if self._nursery is None or self._reachable is False:
            return None
        if len(self._growing) >= GROWING_UPLOADS:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            log.debug("not uploading %s while it is written: %s", path.name, err)
            return None
        stream = GrowingStream(fd)
        self._growing.add(stream)
        self._nursery.start_soon(self._upload_growing, stream)
        return stream

    async def _upload_growing(self, stream: GrowingStream) -> None:
        """Upload unpinned, and pin only a root that matches the local CID.

        Unlike the worker's push, this ``add`` lasts as long as the writer
        takes, and a pinning ``add`` holds Kubo's garbage collection off for
        all that time. Pinning afterwards also keeps a root the node computed
        differently from ever being pinned. A ``repo/gc`` meanwhile may take
        blocks already sent; ``pin/add`` then fails and the worker pushes the
        version again.
        """
        try:
            cid, _ = await self.client.add_reader(stream, pin=False)
            if stream.version_id is None:
                # Answered before the end was sent (a node stopping takes what
                # it got for the whole file). Nothing was pinned.
                return
            if cid != stream.cid:
                # The worker pushes it again and judges the mismatch.
                self._requeue_growing(stream, f"node computed {cid}")
                return
            await self.client.pin_add(cid)
        except (NodeUnreachableError, NodeTimeoutError) as err:
            # No more uploads until the worker has reached the node again.
            self._node_state(False, str(err))
            self._requeue_growing(stream, str(err))
            return
        except (UploadAbandonedError, RemoteError, OSError) as err:
            self._requeue_growing(stream, str(err))
            return
        finally:
            stream.close()
            self._growing.discard(stream)
        self._node_state(True)
        self._settle(stream.version_id, cid)

    def _requeue_growing(self, stream: GrowingStream, reason: str) -> None:
        """Hand the version of a failed upload (if it got one) to the worker."""
        if stream.version_id is None:
            return
        log.debug("upload during the write ended: %s; queued instead", reason)
        current = self.vault.index.get_version(stream.version_id)
        if current is not None and current.state == "pinning":
            self.vault.index.set_pin_state(current.id, "queued", next_try_ns=0)
        self.wake()

    async def _snapshot_if_due(self) -> None:
        if self.snapshots is None or not self.snapshots.due():
            return
        if self.vault.index.pending_pins()[0]:
            return
        try:
            await self.snapshots.take(self.vault.paths.staging)
        except (NodeUnreachableError, NodeTimeoutError) as err:
            self._node_state(False, str(err))
        except SnapshotMismatchError as err:
            log.error("index snapshot: %s", err)
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
            self._fail(version, "stream missing locally")
            return True
        index.set_pin_state(version.id, "pinning")
        try:
            cid, _ = await self.client.add_stream(path, pin=True)
        except (NodeUnreachableError, NodeTimeoutError) as err:
            self._node_state(False, str(err))
            if self._released(version):
                return False
            retry = time.time_ns() + int(UNREACHABLE_RETRY_SECONDS * 1e9)
            index.set_pin_state(version.id, "queued", next_try_ns=retry)
            return False
        except RemoteError as err:
            self._node_state(True)
            if not self._released(version):
                self._give_up_or_retry(version, str(err))
            return True
        except OSError as err:
            # The file was deleted, and its stream with it, before the push
            # could open it: nothing to pin. Any other reason is a fault here.
            if not self._released(version):
                self._fail(version, f"stream unreadable: {err.strerror}")
            return True
        self._node_state(True)
        if cid != version.cid:
            current = index.get_version(version.id)
            if current is not None and current.state != "unpin":
                self._fail(version, f"node computed {cid}")
            return True
        self._settle(version.id, cid)
        return True

    def _released(self, version: VersionRow) -> bool:
        """Whether ``version`` was released (its file deleted or superseded
        past retention) while it was pushed; ``unpin_released`` then takes
        care of it, and the wake makes that soon."""
        current = self.vault.index.get_version(version.id)
        if current is None or current.state == "unpin":
            self.wake()
            return True
        return False

    def _settle(self, version_id: int, cid: Cid) -> None:
        """Record the pin of a version whose CID the node confirmed."""
        current = self.vault.index.get_version(version_id)
        if current is None or current.state == "unpin":
            # Released while it was pushed: ``unpin_released`` takes it off.
            self.wake()
            return
        self.vault.index.set_pin_state(version_id, "pinned")
        log.debug("pinned %s", cid)

    def _fail(self, version: VersionRow, reason: str) -> None:
        """Mark a version failed for a reason another try cannot change by
        itself; ``jwtfs flush`` tries again. Logged once per new reason."""
        self.vault.index.set_pin_state(
            version.id, "failed", reason=reason, next_try_ns=NEVER_NS
        )
        if version.reason == reason:
            log.debug("pin of %s failed again: %s", version.cid, reason)
        elif reason.startswith("node computed"):
            log.error(
                "pin failed: the node computed CID %s for stream %s; kept locally",
                reason.removeprefix("node computed "),
                version.cid,
            )
        else:
            log.error("pin failed: %s: %s; kept locally", version.cid, reason)

    def _give_up_or_retry(self, version: VersionRow, reason: str) -> None:
        """Back off after an error answer; past ``MAX_ATTEMPTS`` show the
        version as failed, but keep trying."""
        attempts = version.attempts + 1
        backoff = min(MAX_BACKOFF_SECONDS, 2.0**attempts)
        state = "failed" if attempts >= MAX_ATTEMPTS else "queued"
        if attempts == MAX_ATTEMPTS:
            log.error(
                "pin failed: %s after %d attempts: %s; kept locally, retried "
                "at most every %.0f s",
                version.cid,
                attempts,
                reason,
                MAX_BACKOFF_SECONDS,
            )
        elif attempts < MAX_ATTEMPTS:
            log.info(
                "pushing %s failed (%s); retry in %.0f s", version.cid, reason, backoff
            )
        else:
            log.debug("pushing %s failed again: %s", version.cid, reason)
        self.vault.index.set_pin_state(
            version.id,
            state,
            reason=reason,
            attempts=attempts,
            next_try_ns=time.time_ns() + int(backoff * 1e9),
        )

    async def unpin_released(self) -> None:
        """Unpin versions marked ``unpin``; forget them once the node agrees."""
        uploading = {stream.version_id for stream in self._growing}
        for version in self.vault.index.versions_to_unpin():
            if version.id in uploading:
                # Its add may still pin it; unpinned once that has ended.
                continue
            if self.vault.index.cid_in_use(version.cid):
                # Another version has the same stream (a file emptied again
                # has its first, empty version's CID): it needs the pin.
                self.vault.forget_version(version)
                continue
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
            versions, size = index.pending_pins()
            log.warning(
                "IPFS node unreachable (%s); %d versions (%d bytes) wait to be pinned",
                reason,
                versions,
                size,
            )
