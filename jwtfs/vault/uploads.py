"""Streams uploaded while they are still being written.

A new file written front to back is encrypted into its staging stream in
order, so the front of the stream is final long before the file is closed.
A ``GrowingStream`` hands that front to the node's ``add`` as it grows: the
open file calls ``advance`` after each batch of segments reaches the staging
file, and ``finish`` at commit, once the stream's length and CID are known.
The node then has most of the stream when the file is closed, instead of
starting on it only then.

The upload is an optimisation, never the only way a version reaches the node:
it is ``abandon``-ed as soon as the writes stop being sequential (the front
could change), when the file is deleted, or when nothing happens for
``IDLE_SECONDS``, and it ends when the node fails; the version is then pushed
by the pin queue as usual. Abandoning raises ``UploadAbandonedError`` inside
the request, which aborts it. The ``add`` does not pin: the pin queue pins the
root once it matches the local CID, so an aborted upload leaves no pin.

The stream is read through a descriptor of its own, so it stays readable when
the commit moves the staging file into the block store.
"""

from __future__ import annotations

import os

import trio

from jwtfs.errors import JwtfsError

# A writer that pauses this long with the file open (a log file, a download
# that stalls) gives up its upload rather than hold a request open for ever.
IDLE_SECONDS = 10.0
# Reads of the staging file for the request, at most this much at a time.
READ_BYTES = 1024 * 1024


class UploadAbandonedError(JwtfsError):
    """The stream being uploaded can no longer be trusted to stay as sent."""


class GrowingStream:
    """The readable front of a staging stream; read by one ``add`` request.

    ``version_id`` and ``cid`` are set by ``finish``: the version the upload
    pins and the CID computed locally, to compare with the node's.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._sent = 0
        self._available = 0
        self._length: int | None = None
        self._abandoned = False
        self._changed = trio.Event()
        self.version_id: int | None = None
        self.cid: str | None = None

    @property
    def ended(self) -> bool:
        """True once nothing reads the stream any more, or soon will not."""
        return self._abandoned or self._fd < 0

    def advance(self, available: int) -> None:
        """The first ``available`` bytes of the stream are final."""
        if available > self._available:
            self._available = available
            self._wake()

    def finish(self, length: int, cid: str, version_id: int) -> None:
        """The stream is committed: ``length`` bytes, root ``cid``."""
        self._available = self._length = length
        self.cid = cid
        self.version_id = version_id
        self._wake()

    def abandon(self) -> None:
        """Abort the upload; the pin queue pushes the version later."""
        self._abandoned = True
        self._wake()

    def close(self) -> None:
        """Called by the uploader when its request is over, however it went."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def read(self, size: int = -1, /) -> bytes:
        """Return the next bytes of the front, waiting until there are some.

        Returns b"" once a finished stream has been read to its end.

        Raises:
            UploadAbandonedError: ``abandon`` was called, the writer was idle for
                ``IDLE_SECONDS``, or the stream is shorter than promised.
            OSError: the staging file could not be read.
        """
        while not self._abandoned and self._sent >= self._available:
            if self._length is not None:
                return b""
            changed = self._changed
            with trio.move_on_after(IDLE_SECONDS) as idle:
                await changed.wait()
            if idle.cancelled_caught:
                self._abandoned = True
        if self._abandoned:
            raise UploadAbandonedError("the stream changed or its writer went idle")
        count = min(READ_BYTES if size < 0 else size, self._available - self._sent)
        data = await trio.to_thread.run_sync(os.pread, self._fd, count, self._sent)
        if not data:
            self._abandoned = True
            raise UploadAbandonedError("the stream is shorter than written")
        self._sent += len(data)
        return data

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
