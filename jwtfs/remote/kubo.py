"""An async client of the Kubo RPC API (``POST /api/v0/...``).

It speaks to Kubo, to IPFS Cluster's Kubo-compatible proxy, and to the
JavaScript node the tests run, whose answers differ from Kubo's in small ways
this module absorbs:

* CIDs come back in whatever base the node likes (base58btc CIDv1, CIDv0), so
  every CID it returns goes through ``normalize_cid``.
* ``Size`` in an add response is a string in Kubo and a number elsewhere.
* Every multipart part carries a filename and ``application/octet-stream``.
* ``cat`` is never asked for an empty range or one past the end (the JS node
  answers 400 and 500 where Kubo answers an empty 200): the stream's length is
  known or looked up first, and the answer must have exactly the bytes asked.
* ``block/put`` gets ``format=raw`` as well as ``cid-codec=raw``, since the JS
  node ignores the latter, and blocks stay under ``MAX_BLOCK_PUT``.
* ``pin/ls`` is never asked for ``cid-base`` (the JS node fails once a CIDv0 is
  pinned) and its entries may lack ``Name``.

An error that happens after the node has started a streamed answer travels in
an ``X-Stream-Error`` HTTP trailer, which httpx does not expose. Such an answer
looks complete but short, so every streamed result is checked for its
expected length, entries or hash instead.

Once a request is sent, the node must bring its answer on by a whole JSON
entry or ``PROGRESS_BYTES`` within every ``timeout`` seconds
(``wire.AnswerDeadline``), so one that trickles cannot hold a request
forever; a progress stream (``pin/add``, ``repo/gc``) may last as long as it
advances.

Errors, all under ``RemoteError`` and chained to the httpx exception if any:

    RemoteError
    ├── NodeUnreachableError  no connection could be made, or it was lost
    ├── NodeTimeoutError      connected, but the node did not answer in time,
    │                         or its answer stopped advancing
    └── NodeResponseError     HTTP status >= 400, or an answer that makes no sense

``block_get`` and ``stream_size`` raise ``IntegrityError`` for a block that
does not match its CID. The ``Authorization`` value is handed to httpx and
never kept, shown or logged here; httpx masks it in reprs.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import trio

from jwtfs.blocks.cid import (
    DAG_PB,
    RAW,
    Cid,
    CidError,
    cid_codec,
    cid_for_block,
    normalize_cid,
    verify_block,
)
from jwtfs.blocks.unixfs import CHUNK_SIZE, decode_node
from jwtfs.errors import ConfigError, RemoteError
from jwtfs.remote.wire import (
    PROGRESS_BYTES,
    Answer,
    AnswerDeadline,
    AsyncReader,
    clip,
    error_message,
    multipart_frame,
    multipart_stream,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
# The JS node refuses request bodies over 1 MiB (hapi's default payload limit);
# the margin leaves room for the multipart framing around the block.
MAX_BLOCK_PUT = 1024 * 1024 - 1024
# Kubo refuses to exchange blocks over 2 MiB; twice that is surely garbage.
_MAX_BLOCK_GET = 4 * 1024 * 1024
# pin/ls answers with one JSON object holding every pin: about 100 bytes each.
_MAX_JSON_LINE = 64 * 1024 * 1024
_MAX_ERROR_BODY = 64 * 1024
# Sent rather than left to the node's default, which Kubo's Import config can
# change; the local CID is computed with this chunker.
_CHUNKER = f"size-{CHUNK_SIZE}"


# What a request carries as its one multipart file part.
_Part = bytes | AsyncReader | None


class NodeUnreachableError(RemoteError):
    """No connection to the node could be made, or it broke mid-request."""


class NodeTimeoutError(RemoteError):
    """The node accepted the connection but did not answer within the timeout."""


class NodeResponseError(RemoteError):
    """The node answered with an error status or with something unusable.

    ``status`` is the HTTP status (None when the status was fine but the body
    was not) and ``node_message`` the ``Message`` of the node's JSON error.
    """

    def __init__(
        self, message: str, *, status: int | None = None, node_message: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.node_message = node_message


class KuboClient:
    """Client of one node's RPC API, e.g. ``http://127.0.0.1:5001``.

    Use as ``async with KuboClient(url) as client:`` or call ``aclose``.
    ``authorization`` is sent as the ``Authorization`` header (Kubo's
    ``API.Authorizations``, a Cluster proxy's basic auth). ``timeout`` bounds
    each read and write, and each stretch of an answer that brings less than a
    JSON entry or ``PROGRESS_BYTES``; connecting is bounded by
    ``CONNECT_TIMEOUT``. Every method that takes a CID raises ``CidError`` (a
    ``ValueError``) before sending anything when it is not one.
    """

    def __init__(
        self,
        api: str,
        *,
        authorization: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Prepare a client; no connection is made until the first call.

        Raises:
            ConfigError: ``api`` is not an http(s) URL without credentials,
                or ``timeout`` is not positive.
        """
        if not timeout > 0:
            raise ConfigError(f"IPFS API timeout must be positive, got {timeout}")
        self._base = _api_base(api)
        self._seconds = timeout
        self._timeout = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        self._client = httpx.AsyncClient(
            base_url=self._base + "/api/v0/",
            headers={"Authorization": authorization} if authorization else {},
            timeout=self._timeout,
            transport=transport,
            # No proxy from the environment: the API is usually on loopback
            # and the Authorization header must go nowhere else.
            trust_env=False,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"KuboClient({self._base!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool.

        Raises:
            Nothing: closing does not fail.
        """
        await self._client.aclose()

    async def version(self) -> str:
        """Return the node's version string (never gate behaviour on it).

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status or an answer without a version.
        """
        version = (await self._json("version", {})).get("Version")
        if not isinstance(version, str):
            raise self._bad("version", "answered without a Version")
        return version

    async def add_stream(self, path: Path, *, pin: bool = True) -> tuple[Cid, int]:
        """Upload the file at ``path`` as one UnixFS file; return (root, Size).

        The file is read in 1 MiB pieces while it is sent, so its size does not
        matter. See ``add_reader`` for the layout and the errors.

        Raises:
            OSError: the file cannot be opened or read.
            NodeUnreachableError, NodeTimeoutError, NodeResponseError: as for
                ``add_reader``.
        """
        async with await trio.open_file(path, "rb") as file:
            return await self.add_reader(file, pin=pin)

    async def add_reader(
        self, reader: AsyncReader, *, pin: bool = True
    ) -> tuple[Cid, int]:
        """Upload what ``reader`` gives until it gives b""; return (root, Size).

        The DAG is laid out as ``jwtfs.blocks.unixfs`` lays it out (CIDv1, raw
        leaves, 256 KiB chunks), so the root can be compared with the local
        one; ``Size`` is the DAG's cumulative size. No name is sent. The body
        is sent as it is read, so a reader may wait for data that is still
        being written; an exception it raises aborts the request (nothing is
        pinned then) and reaches the caller unchanged.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status, or no usable root in the answer.
        """
        params = {
            "cid-version": "1",
            "raw-leaves": "true",
            "chunker": _CHUNKER,
            "pin": "true" if pin else "false",
            "cid-base": "base32",
        }
        entries = await self._json_lines("add", params, part=reader)
        # One entry per file added: here exactly one, the root.
        roots = [entry for entry in entries if "Hash" in entry]
        if len(roots) != 1:
            raise self._bad("add", f"answered {len(roots)} roots, not 1")
        root = self._cid(roots[0].get("Hash"), "add")
        size = self._int(roots[0].get("Size"), "add")
        log.debug("added %s (DAG size %d, pin=%s)", root, size, pin)
        return root, size

    async def pin_add(self, cid: Cid) -> None:
        """Pin ``cid`` and everything below it; a pinned CID stays pinned.

        Progress is asked for because Kubo then keeps writing while it fetches
        a large DAG, so the read timeout does not fire on a pin that advances.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status (e.g. a block the node lacks),
                or an answer that does not confirm ``cid``.
        """
        arg = normalize_cid(cid)
        params = {"arg": arg, "recursive": "true", "progress": "true"}
        pins: set[Cid] = set()
        for entry in await self._json_lines("pin/add", params):
            value = entry.get("Pins", [])
            if not isinstance(value, list):
                raise self._bad("pin/add", f"answered {clip(repr(entry))}")
            pins.update(self._cid(item, "pin/add") for item in value)
        if arg not in pins:
            raise self._bad("pin/add", f"did not confirm {arg}")
        log.debug("pinned %s", arg)

    async def pin_rm(self, cid: Cid) -> None:
        """Remove the recursive pin on ``cid``; a CID not pinned is no error.

        A CID pinned only indirectly (inside another pinned DAG) stays there.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status other than "not pinned".
        """
        arg = normalize_cid(cid)
        try:
            await self._json_lines("pin/rm", {"arg": arg, "recursive": "true"})
        except NodeResponseError as exc:
            if not _is_not_pinned(exc):
                raise
            log.debug("unpin %s: it was not pinned", arg)
            return
        log.debug("unpinned %s", arg)

    async def pin_ls(self, cid: Cid | None = None) -> set[Cid]:
        """Return the recursively pinned CIDs, normalized.

        With ``cid``, only whether that one is pinned: ``{cid}`` or empty.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status other than "not pinned", or an
                answer that is not a map of CIDs.
        """
        params = {"type": "recursive"}
        if cid is not None:
            params["arg"] = normalize_cid(cid)
        try:
            answer = await self._json("pin/ls", params)
        except NodeResponseError as exc:
            if cid is not None and _is_not_pinned(exc):
                return set()
            raise
        keys = answer.get("Keys", {})
        if not isinstance(keys, dict):
            raise self._bad("pin/ls", "answered without a map of Keys")
        return {self._cid(key, "pin/ls") for key in keys}

    async def stream_size(self, cid: Cid) -> int:
        """Return the byte length of the UnixFS file rooted at ``cid``.

        A raw root is asked for its block size; a dag-pb root is fetched,
        verified and decoded.

        Raises:
            ValueError: ``cid`` is neither raw nor dag-pb.
            IntegrityError: the root block does not match ``cid`` or is not a
                File node of the layout jwtfs builds.
            NodeUnreachableError, NodeTimeoutError, NodeResponseError: as for
                ``block_get``.
        """
        codec = cid_codec(cid)
        if codec == RAW:
            answer = await self._json("block/stat", {"arg": normalize_cid(cid)})
            return self._int(answer.get("Size"), "block/stat")
        if codec == DAG_PB:
            return decode_node(await self.block_get(cid))[1]
        raise ValueError(f"{cid} is not the CID of a UnixFS file")

    async def cat(
        self, cid: Cid, offset: int, length: int, *, size: int | None = None
    ) -> bytes:
        """Return up to ``length`` bytes of the file ``cid`` from ``offset``.

        The answer is shorter only where the file ends, and empty from the end
        on. ``size`` is the file's length when the caller knows it; otherwise
        it is looked up first (``stream_size``). The bytes are not verified
        here: the caller authenticates them (the ciphertext format does).

        Raises:
            ValueError: ``offset`` or ``length`` is negative.
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status, or not exactly the bytes asked.
            IntegrityError: as for ``stream_size``.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        arg = normalize_cid(cid)
        if length == 0:
            return b""
        if size is None:
            size = await self.stream_size(arg)
        if offset >= size:
            return b""
        want = min(length, size - offset)
        params = {"arg": arg, "offset": str(offset), "length": str(want)}
        async with self._stream("cat", params) as answer:
            data = await self._read(answer, want, "cat")
        if len(data) != want:
            raise self._bad("cat", f"gave {len(data)} of {want} bytes of {arg}")
        return data

    async def block_get(self, cid: Cid) -> bytes:
        """Fetch one block and check it against ``cid``.

        Raises:
            IntegrityError: the bytes do not hash to ``cid``.
            NodeUnreachableError, NodeTimeoutError: as for every call (an
                online Kubo searches the network for a block it lacks, so a
                missing block may time out).
            NodeResponseError: an error status (an offline node lacking the
                block) or a block over 4 MiB.
        """
        arg = normalize_cid(cid)
        async with self._stream("block/get", {"arg": arg}) as answer:
            data = await self._read(answer, _MAX_BLOCK_GET, "block/get")
        verify_block(arg, data)
        return data

    async def block_put(self, data: bytes) -> Cid:
        """Store ``data`` as one raw block, unpinned; return its CID.

        Raises:
            ValueError: ``data`` is longer than ``MAX_BLOCK_PUT``.
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status, or a CID other than the raw
                sha2-256 CID of ``data``.
        """
        if len(data) > MAX_BLOCK_PUT:
            raise ValueError(f"block of {len(data)} bytes is over {MAX_BLOCK_PUT}")
        params = {
            "cid-codec": "raw",
            "format": "raw",
            "mhtype": "sha2-256",
            "cid-base": "base32",
        }
        answer = await self._json("block/put", params, part=data)
        cid = self._cid(answer.get("Key"), "block/put")
        if cid != cid_for_block(RAW, data):
            raise self._bad("block/put", f"stored the block as {cid}")
        return cid

    async def repo_gc(self) -> None:
        """Delete every block the node holds that no pin reaches.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call (gc is
                slow on a node with much pinned; use a generous timeout).
            NodeResponseError: an error status or an error entry in the answer.
        """
        # Kubo stops at the first error and reports it in the trailer unless
        # errors are streamed as entries.
        params = {"stream-errors": "true"}
        async with (
            self._stream("repo/gc", params) as answer,
            aclosing(self._iter_json(answer, "repo/gc")) as entries,
        ):
            async for entry in entries:
                if entry.get("Error"):
                    raise self._bad("repo/gc", clip(str(entry["Error"])))

    async def dag_import(self, car: Path) -> list[Cid]:
        """Import a CARv1 file and pin its roots; return the roots.

        Raises:
            OSError: the file cannot be opened or read.
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status, a root that failed to pin, or
                an answer without roots.
        """
        params = {"pin-roots": "true"}
        async with await trio.open_file(car, "rb") as file:
            entries = await self._json_lines("dag/import", params, part=file)
        roots = [
            self._import_root(entry["Root"]) for entry in entries if "Root" in entry
        ]
        if not roots:
            raise self._bad("dag/import", "answered without roots")
        return roots

    def _import_root(self, root: object) -> Cid:
        if not isinstance(root, dict) or not isinstance(root.get("Cid"), dict):
            raise self._bad("dag/import", f"answered root {clip(repr(root))}")
        cid = self._cid(root["Cid"].get("/"), "dag/import")
        if root.get("PinErrorMsg"):
            message = clip(str(root["PinErrorMsg"]))
            raise self._bad("dag/import", f"could not pin {cid}: {message}")
        return cid

    @asynccontextmanager
    async def _stream(
        self, command: str, params: Mapping[str, str], *, part: _Part = None
    ) -> AsyncIterator[Answer]:
        """Send one request and yield its answer once the status is fine.

        ``part`` becomes the one file part of a multipart body. httpx errors
        raised while the caller reads the body are translated too, and an
        answer that stops advancing (``AnswerDeadline``) ends in
        ``NodeTimeoutError``.
        """
        boundary = secrets.token_hex(16)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        head, tail = multipart_frame(boundary)
        deadline = AnswerDeadline(self._seconds)
        body: bytes | AsyncGenerator[bytes, None] | None = None
        if isinstance(part, bytes) or part is None:
            # Small enough to be sent at once: the clock runs from the start.
            body = None if part is None else head + part + tail
            deadline.restart()
        else:
            body = multipart_stream(head, part, tail, sent=deadline.restart)
        try:
            with deadline.scope:
                async with self._client.stream(
                    "POST",
                    command,
                    params=params,
                    content=body,
                    headers=headers if part is not None else None,
                    timeout=self._timeout,
                ) as response:
                    # A node may answer before it has read the whole body.
                    deadline.answered = True
                    deadline.restart()
                    if response.status_code >= 400:
                        raise await self._status_error(command, response, deadline)
                    yield Answer(response, deadline)
        except httpx.HTTPError as exc:
            raise self._translate(exc, command) from exc
        finally:
            if isinstance(body, AsyncGenerator):
                await body.aclose()
        if deadline.scope.cancelled_caught and not deadline.answered:
            raise NodeTimeoutError(
                f"the IPFS node at {self._base} did not answer {command} "
                f"within {deadline.seconds:g} s"
            )
        if deadline.scope.cancelled_caught:
            raise NodeTimeoutError(
                f"the IPFS node at {self._base} answered {command} too slowly: "
                f"less than {PROGRESS_BYTES // 1024} KiB in {deadline.seconds:g} s"
            )

    async def _json(
        self, command: str, params: Mapping[str, str], *, part: _Part = None
    ) -> dict[str, Any]:
        entries = await self._json_lines(command, params, part=part)
        if len(entries) != 1:
            raise self._bad(command, f"answered {len(entries)} JSON values, not 1")
        return entries[0]

    async def _json_lines(
        self, command: str, params: Mapping[str, str], *, part: _Part = None
    ) -> list[dict[str, Any]]:
        async with self._stream(command, params, part=part) as answer:
            return [entry async for entry in self._iter_json(answer, command)]

    async def _iter_json(
        self, answer: Answer, command: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield each newline-separated JSON object of a streamed answer."""
        pending = bytearray()
        async for chunk in answer.response.aiter_bytes():
            answer.deadline.received(len(chunk))
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                pending += chunk[start:end]
                if pending.strip():
                    answer.deadline.restart()
                    yield self._parse_entry(pending, command)
                pending.clear()
                start = end + 1
            pending += chunk[start:]
            if len(pending) > _MAX_JSON_LINE:
                raise self._bad(command, "answered a JSON value over 64 MiB")
        if pending.strip():
            yield self._parse_entry(pending, command)

    def _parse_entry(self, line: bytearray, command: str) -> dict[str, Any]:
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise self._bad(command, "answered something that is not JSON") from exc
        if not isinstance(entry, dict):
            raise self._bad(command, f"answered {clip(repr(entry))}")
        if entry.get("Type") == "error" and "Message" in entry:
            message = clip(str(entry["Message"]))
            raise NodeResponseError(
                f"{self._base}: {command}: {message}", node_message=message
            )
        return entry

    async def _read(self, answer: Answer, limit: int, command: str) -> bytes:
        """Read a whole body, refusing one longer than ``limit`` bytes."""
        data = bytearray()
        async for chunk in answer.response.aiter_bytes():
            answer.deadline.received(len(chunk))
            data += chunk
            if len(data) > limit:
                raise self._bad(command, f"answered more than {limit} bytes")
        return bytes(data)

    async def _status_error(
        self, command: str, response: httpx.Response, deadline: AnswerDeadline
    ) -> NodeResponseError:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            deadline.received(len(chunk))
            body += chunk
            if len(body) >= _MAX_ERROR_BODY:
                break
        message = error_message(bytes(body[:_MAX_ERROR_BODY]))
        return NodeResponseError(
            f"{self._base}: {command}: HTTP {response.status_code}: {message}",
            status=response.status_code,
            node_message=message,
        )

    def _translate(self, exc: httpx.HTTPError, command: str) -> RemoteError:
        # ConnectTimeout is a TimeoutException, but to the caller a node that
        # cannot be connected to in time is simply not reachable.
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return NodeUnreachableError(
                f"cannot reach the IPFS node at {self._base} ({command}): {exc}"
            )
        if isinstance(exc, httpx.TimeoutException):
            return NodeTimeoutError(
                f"the IPFS node at {self._base} did not answer {command} "
                f"within {self._seconds:g} s"
            )
        if isinstance(exc, httpx.NetworkError):
            return NodeUnreachableError(
                f"lost the connection to the IPFS node at {self._base} "
                f"({command}): {exc}"
            )
        return self._bad(command, f"{type(exc).__name__}: {clip(str(exc))}")

    def _bad(self, command: str, what: str) -> NodeResponseError:
        return NodeResponseError(f"{self._base}: {command} {what}")

    def _cid(self, value: object, command: str) -> Cid:
        if isinstance(value, str):
            try:
                return normalize_cid(value)
            except CidError:
                pass
        raise self._bad(command, f"answered a bad CID {clip(repr(value))}")

    def _int(self, value: object, command: str) -> int:
        # Kubo writes sizes as JSON strings, the JS node as numbers.
        if isinstance(value, int | str) and not isinstance(value, bool):
            try:
                number = int(value)
            except ValueError:
                pass
            else:
                if number >= 0:
                    return number
        raise self._bad(command, f"answered the size {clip(repr(value))}")


def _api_base(api: str) -> str:
    try:
        url = httpx.URL(api)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"bad IPFS API URL {api!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"IPFS API URL must be http(s)://HOST:PORT, got {api!r}")
    if url.userinfo:
        raise ConfigError(
            "IPFS API URL must not hold credentials; use the authorization setting"
        )
    path = url.path.rstrip("/").removesuffix("/api/v0")
    return str(url.copy_with(path=path or "/", query=None, fragment=None)).rstrip("/")


def _is_not_pinned(exc: NodeResponseError) -> bool:
    # Kubo: "not pinned or pinned indirectly", "path '...' is not pinned";
    # the JS node: "... is not pinned".
    return exc.status is not None and "not pinned" in exc.node_message
