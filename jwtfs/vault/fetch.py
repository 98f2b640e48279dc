"""Reading evicted streams back from the pin target, block by block.

A stream whose local copy was evicted is read through its UnixFS DAG: the
root and inner nodes give each leaf's position, and a read fetches only the
leaves that hold the bytes it needs. ``KuboClient.block_get`` checks every
block against its CID before it is returned, so nothing unverified is ever
decrypted. A fetch that does not finish within ``fetch_timeout`` fails with
``RemoteError`` (EIO for the reader) instead of hanging.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import trio

from jwtfs.blocks.cid import RAW, Cid, cid_codec
from jwtfs.blocks.unixfs import build_dag_from_file, decode_spans
from jwtfs.errors import IntegrityError, RemoteError
from jwtfs.remote.kubo import KuboClient

log = logging.getLogger(__name__)

# Leaves kept in memory between reads: 16 of 256 KiB.
_LEAF_CACHE = 16
# A failed fetch is remembered this long: the kernel retries a failed read at
# once (readahead, then the page itself), and the retry must not wait again.
FAILURE_MEMORY_SECONDS = 5.0


class RemoteReader:
    """Byte ranges of streams that live only on the node."""

    def __init__(self, client: KuboClient, *, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self._spans: dict[Cid, list[tuple[Cid, int, int]]] = {}
        self._leaves: OrderedDict[Cid, bytes] = OrderedDict()
        self._failures: dict[Cid, tuple[float, RemoteError]] = {}

    async def read(self, root: Cid, offset: int, length: int) -> bytes:
        """Return stream bytes ``[offset, offset + length)`` (short at the end).

        A failure is logged once, naming the CID, and repeated without another
        attempt for ``FAILURE_MEMORY_SECONDS``.

        Raises:
            RemoteError: the node failed or did not answer within the timeout.
            IntegrityError: a block did not match its CID.
        """
        failed = self._failures.get(root)
        if (
            failed is not None
            and trio.current_time() - failed[0] < FAILURE_MEMORY_SECONDS
        ):
            raise failed[1]
        try:
            with trio.fail_after(self.timeout):
                data = await self._read(root, offset, length)
        except trio.TooSlowError:
            error = RemoteError(
                f"fetching {root} from the node took longer than {self.timeout:g} s"
            )
            self._remember_failure(root, error)
            raise error from None
        except RemoteError as err:
            self._remember_failure(root, err)
            raise
        self._failures.pop(root, None)
        return data

    def _remember_failure(self, root: Cid, error: RemoteError) -> None:
        self._failures[root] = (trio.current_time(), error)
        log.error(
            "cannot fetch evicted stream %s: %s; reads of it give EIO", root, error
        )

    async def _read(self, root: Cid, offset: int, length: int) -> bytes:
        end = offset + length
        parts = []
        for cid, start, size in await self._leaf_spans(root):
            if start + size <= offset or start >= end:
                continue
            data = await self._leaf(cid)
            parts.append(
                data[max(offset, start) - start : min(end, start + size) - start]
            )
        return b"".join(parts)

    async def _leaf_spans(self, root: Cid) -> list[tuple[Cid, int, int]]:
        spans = self._spans.get(root)
        if spans is None:
            spans = await self._walk(root, 0)
            self._spans[root] = spans
        return spans

    async def _walk(self, cid: Cid, base: int) -> list[tuple[Cid, int, int]]:
        if cid_codec(cid) == RAW:
            data = await self._leaf(cid)
            return [(cid, base, len(data))]
        node = await self.client.block_get(cid)
        spans: list[tuple[Cid, int, int]] = []
        for child, offset, size in decode_spans(node):
            if cid_codec(child) == RAW:
                spans.append((child, base + offset, size))
            else:
                spans.extend(await self._walk(child, base + offset))
        return spans

    async def _leaf(self, cid: Cid) -> bytes:
        data = self._leaves.get(cid)
        if data is None:
            data = await self.client.block_get(cid)
            self._leaves[cid] = data
            while len(self._leaves) > _LEAF_CACHE:
                self._leaves.popitem(last=False)
        self._leaves.move_to_end(cid)
        return data

    async def download(self, root: Cid, target: Path) -> None:
        """Fetch a whole stream into ``target`` and check it has CID ``root``.

        Raises:
            RemoteError, IntegrityError: as for ``read``.
        """
        spans = await self._leaf_spans(root)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for cid, start, _ in spans:
                with trio.fail_after(self.timeout):
                    data = await self.client.block_get(cid)
                os.pwrite(fd, data, start)
        except trio.TooSlowError:
            raise RemoteError(f"fetching {root} from the node timed out") from None
        finally:
            os.close(fd)
        dag = await trio.to_thread.run_sync(build_dag_from_file, target)
        if dag.root != root:
            raise IntegrityError(
                f"downloaded stream has CID {dag.root}, expected {root}"
            )
