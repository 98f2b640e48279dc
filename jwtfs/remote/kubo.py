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

Errors, all under ``RemoteError`` and chained to the httpx exception:

    RemoteError
    ├── NodeUnreachableError  no connection could be made, or it was lost
    ├── NodeTimeoutError      connected, but the node did not answer in time
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
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

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
_MAX_MESSAGE_CHARS = 500
_UPLOAD_CHUNK = 1024 * 1024
# Sent rather than left to the node's default, which Kubo's Import config can
# change; the local CID is computed with this chunker.
_CHUNKER = f"size-{CHUNK_SIZE}"


class _AsyncReader(Protocol):
    async def read(self, size: int = -1, /) -> bytes: ...


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
    each read and write; connecting is bounded by ``CONNECT_TIMEOUT``.
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
        self._timeout = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        headers = {"Authorization": authorization} if authorization else {}
        self._client = httpx.AsyncClient(
            base_url=self._base + "/api/v0/",
            headers=headers,
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
            Nothing: closing never fails.
        """
        await self._client.aclose()

    async def version(self) -> str:
        """Return the node's version string (never gate behaviour on it).

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status or an answer without a version.
        """
        answer = await self._json("version", {})
        version = answer.get("Version")
        if not isinstance(version, str):
            raise NodeResponseError(f"{self._base}: version answer has no Version")
        return version

    async def add_stream(self, path: Path, *, pin: bool = True) -> tuple[Cid, int]:
        """Upload the file at ``path`` as one UnixFS file; return (root, Size).

        The file is read in 1 MiB pieces while it is sent, so its size does not
        matter. The DAG is built as ``jwtfs.blocks.unixfs`` builds it (CIDv1,
        raw leaves, 256 KiB chunks), so the root can be compared with the local
        one; ``Size`` is the DAG's cumulative size. The file's name is not sent.

        Raises:
            OSError: the file cannot be opened or read.
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status, or no usable root in the answer.
        """
        params = {
            "cid-version": "1",
            "raw-leaves": "true",
            "chunker": _CHUNKER,
            "pin": _flag(pin),
            "cid-base": "base32",
        }
        async with await trio.open_file(path, "rb") as file:
            boundary = secrets.token_hex(16)
            body = _multipart_file(file, boundary)
            try:
                entries = await self._json_lines(
                    "add", params, content=body, headers=_multipart_headers(boundary)
                )
            finally:
                await body.aclose()
        roots = [entry for entry in entries if "Hash" in entry]
        if not roots:
            raise NodeResponseError(f"{self._base}: add answered without a root")
        root = self._cid(roots[-1].get("Hash"), "add")
        size = self._int(roots[-1].get("Size"), "add")
        log.debug("added %s (%d bytes in the DAG, pin=%s)", root, size, pin)
        return root, size

    async def pin_add(self, cid: Cid) -> None:
        """Pin ``cid`` and everything below it; a pinned CID stays pinned.

        Progress is requested so that Kubo keeps writing while it fetches a
        large DAG, which keeps the read timeout from firing.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status (e.g. a block the node lacks),
                or an answer that does not name ``cid``.
        """
        params = {"arg": cid, "recursive": "true", "progress": "true"}
        entries = await self._json_lines("pin/add", params)
        pins: set[Cid] = set()
        for entry in entries:
            value = entry.get("Pins", [])
            if not isinstance(value, list):
                raise NodeResponseError(f"{self._base}: pin/add answered {entry!r}")
            pins.update(self._cid(item, "pin/add") for item in value)
        if normalize_cid(cid) not in pins:
            raise NodeResponseError(f"{self._base}: pin/add did not confirm {cid}")
        log.debug("pinned %s", cid)

    async def pin_rm(self, cid: Cid) -> None:
        """Remove the recursive pin on ``cid``; a CID not pinned is no error.

        A CID only pinned indirectly (inside another pinned DAG) stays there.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status other than "not pinned".
        """
        try:
            await self._json_lines("pin/rm", {"arg": cid, "recursive": "true"})
        except NodeResponseError as exc:
            if not _is_not_pinned(exc):
                raise
            log.debug("unpin %s: it was not pinned", cid)
            return
        log.debug("unpinned %s", cid)

    async def pin_ls(self, cid: Cid | None = None) -> set[Cid]:
        """Return the recursively pinned CIDs, or whether ``cid`` is one of them.

        With ``cid``, the answer is ``{cid}`` (normalized) or the empty set.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status other than "not pinned", or an
                answer that is not a map of CIDs.
        """
        params = {"type": "recursive"}
        if cid is not None:
            params["arg"] = cid
        try:
            answer = await self._json("pin/ls", params)
        except NodeResponseError as exc:
            if cid is not None and _is_not_pinned(exc):
                return set()
            raise
        keys = answer.get("Keys", {})
        if not isinstance(keys, dict):
            raise NodeResponseError(f"{self._base}: pin/ls answered without Keys")
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
            answer = await self._json("block/stat", {"arg": cid})
            return self._int(answer.get("Size"), "block/stat")
        if codec == DAG_PB:
            _, filesize = decode_node(await self.block_get(cid))
            return filesize
        raise ValueError(f"{cid} is not a UnixFS file CID")

    async def cat(
        self, cid: Cid, offset: int, length: int, *, size: int | None = None
    ) -> bytes:
        """Return up to ``length`` bytes of the file ``cid`` from ``offset``.

        The answer is shorter only where the file ends, and empty from the end
        on. ``size`` is the file's length when the caller knows it; otherwise
        it is looked up first (``stream_size``). Bytes come back unverified:
        the caller authenticates them (the ciphertext format does).

        Raises:
            ValueError: ``offset`` or ``length`` is negative.
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status, or not exactly the bytes asked.
            IntegrityError: as for ``stream_size``.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        if length == 0:
            return b""
        if size is None:
            size = await self.stream_size(cid)
        if offset >= size:
            return b""
        want = min(length, size - offset)
        params = {"arg": cid, "offset": str(offset), "length": str(want)}
        async with self._stream("cat", params) as response:
            data = await self._read(response, want, "cat")
        if len(data) != want:
            raise NodeResponseError(
                f"{self._base}: cat {cid} gave {len(data)} of {want} bytes"
            )
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
        async with self._stream("block/get", {"arg": cid}) as response:
            data = await self._read(response, _MAX_BLOCK_GET, "block/get")
        verify_block(cid, data)
        return data

    async def block_put(self, data: bytes) -> Cid:
        """Store ``data`` as one raw block; return its CID.

        Raises:
            ValueError: ``data`` is longer than ``MAX_BLOCK_PUT``.
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status, or a CID other than the raw
                sha2-256 CID of ``data``.
        """
        if len(data) > MAX_BLOCK_PUT:
            raise ValueError(f"block of {len(data)} bytes is over {MAX_BLOCK_PUT}")
        boundary = secrets.token_hex(16)
        head, tail = _multipart_frame(boundary)
        params = {
            "cid-codec": "raw",
            "format": "raw",
            "mhtype": "sha2-256",
            "cid-base": "base32",
        }
        answer = await self._json(
            "block/put",
            params,
            content=head + data + tail,
            headers=_multipart_headers(boundary),
        )
        cid = self._cid(answer.get("Key"), "block/put")
        if cid != cid_for_block(RAW, data):
            raise NodeResponseError(f"{self._base}: block/put stored it as {cid}")
        return cid

    async def repo_gc(self) -> None:
        """Delete every block the node holds that no pin reaches.

        Raises:
            NodeUnreachableError, NodeTimeoutError: as for every call (gc is
                slow on a node with much pinned; use a generous timeout).
            NodeResponseError: an error status or an error entry in the answer.
        """
        async with self._stream("repo/gc", {}) as response:
            async for entry in self._iter_json(response, "repo/gc"):
                if entry.get("Error"):
                    raise NodeResponseError(
                        f"{self._base}: repo/gc: {_clip(str(entry['Error']))}"
                    )

    async def dag_import(self, car: Path) -> list[Cid]:
        """Import a CARv1 file and pin its roots; return the roots.

        Raises:
            OSError: the file cannot be opened or read.
            NodeUnreachableError, NodeTimeoutError: as for every call.
            NodeResponseError: an error status, a root that failed to pin, or
                an answer without roots.
        """
        async with await trio.open_file(car, "rb") as file:
            boundary = secrets.token_hex(16)
            body = _multipart_file(file, boundary)
            try:
                entries = await self._json_lines(
                    "dag/import",
                    {"pin-roots": "true"},
                    content=body,
                    headers=_multipart_headers(boundary),
                )
            finally:
                await body.aclose()
        roots = [
            self._import_root(entry["Root"]) for entry in entries if "Root" in entry
        ]
        if not roots:
            raise NodeResponseError(f"{self._base}: dag/import answered without roots")
        return roots

    def _import_root(self, root: Any) -> Cid:
        if not isinstance(root, dict) or not isinstance(root.get("Cid"), dict):
            raise NodeResponseError(f"{self._base}: dag/import answered {root!r}")
        cid = self._cid(root["Cid"].get("/"), "dag/import")
        if root.get("PinErrorMsg"):
            raise NodeResponseError(
                f"{self._base}: dag/import could not pin {cid}: "
                + _clip(str(root["PinErrorMsg"]))
            )
        return cid

    @asynccontextmanager
    async def _stream(
        self,
        command: str,
        params: Mapping[str, str],
        *,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send one request and yield its response once the status is fine.

        httpx errors raised while the caller reads the body are translated too.
        """
        try:
            async with self._client.stream(
                "POST",
                command,
                params=params,
                content=content,
                headers=headers,
                timeout=self._timeout,
            ) as response:
                if response.status_code >= 400:
                    raise await self._status_error(command, response)
                yield response
        except httpx.HTTPError as exc:
            raise self._translate(exc, command) from exc

    async def _json(
        self,
        command: str,
        params: Mapping[str, str],
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        entries = await self._json_lines(
            command, params, content=content, headers=headers
        )
        if len(entries) != 1:
            raise NodeResponseError(
                f"{self._base}: {command} answered {len(entries)} JSON values, not 1"
            )
        return entries[0]

    async def _json_lines(
        self,
        command: str,
        params: Mapping[str, str],
        *,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        async with self._stream(
            command, params, content=content, headers=headers
        ) as response:
            return [entry async for entry in self._iter_json(response, command)]

    async def _iter_json(
        self, response: httpx.Response, command: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield each newline-separated JSON object of a streamed answer."""
        pending = bytearray()
        async for chunk in response.aiter_bytes():
            pending += chunk
            *lines, rest = pending.split(b"\n")
            pending = bytearray(rest)
            if len(pending) > _MAX_JSON_LINE:
                raise NodeResponseError(f"{self._base}: {command}: answer too long")
            for line in lines:
                if line.strip():
                    yield self._parse_entry(line, command)
        if pending.strip():
            yield self._parse_entry(pending, command)

    def _parse_entry(self, line: bytes | bytearray, command: str) -> dict[str, Any]:
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise NodeResponseError(
                f"{self._base}: {command} answered something that is not JSON"
            ) from exc
        if not isinstance(entry, dict):
            raise NodeResponseError(f"{self._base}: {command} answered {entry!r}")
        if entry.get("Type") == "error" and "Message" in entry:
            message = _clip(str(entry["Message"]))
            raise NodeResponseError(
                f"{self._base}: {command}: {message}", node_message=message
            )
        return entry

    async def _read(self, response: httpx.Response, limit: int, command: str) -> bytes:
        """Read a whole body, refusing one longer than ``limit`` bytes."""
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > limit:
                raise NodeResponseError(
                    f"{self._base}: {command} answered more than {limit} bytes"
                )
        return bytes(data)

    async def _status_error(
        self, command: str, response: httpx.Response
    ) -> NodeResponseError:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= _MAX_ERROR_BODY:
                break
        message = _error_message(bytes(body[:_MAX_ERROR_BODY]))
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
                f"the IPFS node at {self._base} did not answer {command} within "
                f"{self._timeout.read} s"
            )
        if isinstance(exc, httpx.NetworkError):
            return NodeUnreachableError(
                f"lost the connection to the IPFS node at {self._base} "
                f"({command}): {exc}"
            )
        return NodeResponseError(
            f"{self._base}: {command}: {type(exc).__name__}: {_clip(str(exc))}"
        )

    def _cid(self, value: object, command: str) -> Cid:
        if not isinstance(value, str):
            raise NodeResponseError(f"{self._base}: {command} answered CID {value!r}")
        try:
            return normalize_cid(value)
        except CidError as exc:
            raise NodeResponseError(
                f"{self._base}: {command} answered a bad CID {_clip(value)!r}"
            ) from exc

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
        raise NodeResponseError(f"{self._base}: {command} answered size {value!r}")


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


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _is_not_pinned(exc: NodeResponseError) -> bool:
    # Kubo: "not pinned or pinned indirectly", "path '...' is not pinned";
    # the JS node: "... is not pinned".
    return exc.status is not None and "not pinned" in exc.node_message


def _multipart_headers(boundary: str) -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _multipart_frame(boundary: str) -> tuple[bytes, bytes]:
    # A neutral filename: names stay on this machine. Both node kinds need a
    # filename and a Content-Type on the part to treat it as file data.
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="data"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode("ascii")
    return head, f"\r\n--{boundary}--\r\n".encode("ascii")


async def _multipart_file(
    file: _AsyncReader, boundary: str
) -> AsyncGenerator[bytes, None]:
    head, tail = _multipart_frame(boundary)
    yield head
    while chunk := await file.read(_UPLOAD_CHUNK):
        yield chunk
    yield tail


def _error_message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("Message"), str):
        return _clip(parsed["Message"])
    return _clip(body.decode("utf-8", "replace").strip())


def _clip(text: str) -> str:
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[:_MAX_MESSAGE_CHARS] + "..."
