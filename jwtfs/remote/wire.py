"""How a request to the node and its answer travel: the multipart body, the
deadline an answer must keep, and the node's error text, clipped for a message.

httpx's read timeout starts again at every byte, so a node that trickles its
answer (a byte a second) would hold a request forever. ``AnswerDeadline``
bounds each stretch of an answer instead: once the request is sent, each
``timeout`` seconds must bring a whole JSON entry or ``PROGRESS_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

import httpx
import trio

# How much of an answer counts as progress when it is not a whole JSON entry:
# a block is 256 KiB, so a healthy node sends this many bytes at once.
PROGRESS_BYTES = 64 * 1024
_MAX_MESSAGE_CHARS = 200
_UPLOAD_CHUNK = 1024 * 1024


class AsyncReader(Protocol):
    """What ``add_reader`` reads: up to ``size`` bytes a call, b"" at the end."""

    async def read(self, size: int = -1, /) -> bytes: ...


class AnswerDeadline:
    """When the node must next have moved its answer on, as a cancel scope.

    The deadline is unset while the request body is still being sent (a file
    written while it is uploaded takes as long as its writer), set once it is
    sent or the node answers, and pushed back by each whole JSON entry or
    ``PROGRESS_BYTES``. ``answered`` tells whether the answer's head came.
    """

    def __init__(self, seconds: float) -> None:
        self.scope = trio.CancelScope()
        self.seconds = seconds
        self.answered = False
        self._bytes = 0

    def restart(self) -> None:
        """Give the node ``seconds`` from now.

        Raises:
            Nothing.
        """
        self._bytes = 0
        self.scope.deadline = trio.current_time() + self.seconds

    def received(self, count: int) -> None:
        """Count ``count`` bytes of answer; restart once they make progress.

        Raises:
            Nothing.
        """
        self._bytes += count
        if self._bytes >= PROGRESS_BYTES:
            self.restart()


class Answer:
    """A response whose status was fine, with the deadline its body keeps."""

    def __init__(self, response: httpx.Response, deadline: AnswerDeadline) -> None:
        self.response = response
        self.deadline = deadline


def multipart_frame(boundary: str) -> tuple[bytes, bytes]:
    """The bytes before and after the one file part of a multipart body.

    Raises:
        Nothing.
    """
    # A neutral filename: local names stay on this machine. Both kinds of node
    # need a filename and a Content-Type on the part to take it as file data.
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="data"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode("ascii")
    return head, f"\r\n--{boundary}--\r\n".encode("ascii")


async def multipart_stream(
    head: bytes, file: AsyncReader, tail: bytes, *, sent: Callable[[], None]
) -> AsyncGenerator[bytes, None]:
    """The body ``head``, what ``file`` gives, ``tail``; then call ``sent``.

    Raises:
        Whatever ``file.read`` raises, unchanged.
    """
    yield head
    while chunk := await file.read(_UPLOAD_CHUNK):
        yield chunk
    yield tail
    # httpx asks for more only once the tail is written: the body is sent.
    sent()


def error_message(body: bytes) -> str:
    """The ``Message`` of a node's JSON error body, else the body as text.

    Raises:
        Nothing.
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("Message"), str):
        return clip(parsed["Message"])
    return clip(body.decode("utf-8", "replace").strip())


def clip(text: str) -> str:
    """The node's words made safe for one log line: control characters
    escaped, so a message cannot forge lines or move a terminal's cursor, and
    cut to a length that fits in one message.

    Raises:
        Nothing.
    """
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[:_MAX_MESSAGE_CHARS] + "..."
