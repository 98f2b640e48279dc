"""Stand-ins for the IPFS node, all on loopback, for tests that need a bad one.

``SilentNode`` accepts connections and never answers; ``UnacceptingNode``
never even completes one. ``TricklingNode`` reads each request and answers it
a byte (or a line) at a time, slowly enough that no single read waits long.
``TamperingProxy`` forwards every request to a real node and flips one byte in
each answer to ``block/get``, or names wrong CIDs for ``add``, or answers it
with errors.
``PrivateNode`` is a real node of the tests' own, started with
``scripts/ipfs-node`` like the session node but in its own state folder, so a
test can stop and start it without disturbing the others.

The fakes serve from threads, since the daemon under test is another process
and must be answered while the test itself blocks on a read.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlsplit

import pytest

from jwtfs.config import is_loopback_url

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ipfs-node"
# Headers that belong to one connection and are not forwarded.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
}


def loopback_port(url: str) -> int:
    """The port of ``url``, which must name a loopback address."""
    parts = urlsplit(url)
    assert is_loopback_url(url), url
    assert parts.port is not None, url
    return parts.port


def closed_loopback_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _Served:
    """A fake served from a thread of its own: ``with`` starts it, and stops
    it (``_stop_serving``) and waits for the thread at the end."""

    _thread: threading.Thread

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_serving()
        self._thread.join(timeout=5)

    def _stop_serving(self) -> None:
        raise NotImplementedError


class SilentNode(_Served):
    """A loopback server that accepts every connection and never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _stop_serving(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._held.append(conn)
            self.accepted += 1


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    """The whole body of the request ``handler`` is serving, chunked or not."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length", "0")))


# What a trickling node answers by default: valid JSON for ``version``, but
# behind so much white space that no test waits for its end.
TRICKLE_ANSWER = b" " * 4096 + b'{"Version": "trickle"}\n'


class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TrickleServer

    def do_POST(self) -> None:
        _read_body(self)
        self.server.requests += 1
        answer = self.server.answer
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(answer)}\r\n\r\n"
        ).encode("ascii")
        pieces = self._pieces(answer)
        if self.server.head_at_once:
            self.wfile.write(head)
        else:
            pieces = self._pieces(head + answer)
        for piece in pieces:
            if self.server.stop.wait(self.server.interval):
                return
            self.wfile.write(piece)

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        if self.server.step == "line":
            yield from data.splitlines(keepends=True)
        else:
            yield from (data[i : i + 1] for i in range(len(data)))

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is for the test."""


class _TrickleServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        interval: float,
        head_at_once: bool,
        answer: bytes,
        step: Literal["byte", "line"],
    ) -> None:
        super().__init__(("127.0.0.1", 0), _TrickleHandler)
        self.interval = interval
        self.head_at_once = head_at_once
        self.answer = answer
        self.step = step
        self.stop = threading.Event()
        self.requests = 0


class TricklingNode(_Served):
    """A loopback server that reads each request whole and then answers it one
    piece (``step``: a byte or a line) every ``interval`` seconds: the status
    line and headers too, unless ``head_at_once``. Each read waits less than a
    read timeout, yet a long ``answer`` takes minutes to end. ``requests``
    counts the requests read, so a test can show the node was asked.
    """

    def __init__(
        self,
        *,
        interval: float = 2.0,
        head_at_once: bool = False,
        answer: bytes = TRICKLE_ANSWER,
        step: Literal["byte", "line"] = "byte",
    ) -> None:
        self._server = _TrickleServer(interval, head_at_once, answer, step)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def requests(self) -> int:
        return self._server.requests

    def _stop_serving(self) -> None:
        self._server.stop.set()
        self._server.shutdown()
        self._server.server_close()


class UnacceptingNode:
    """A loopback port where connecting hangs, as with a host that drops
    packets: the listener never accepts, and its queue (room for one) is
    filled at once, so the kernel ignores every further connection attempt.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def __enter__(self) -> Self:
        self._filler.connect(("127.0.0.1", self.port))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._filler.close()
        self._listener.close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def do_POST(self) -> None:
        body = _read_body(self)
        if self.server.fail_adds and urlsplit(self.path).path.endswith("/add"):
            self._fail()
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port)
        try:
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP
            }
            upstream.request("POST", self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            content = bytearray(answer.read())
            status, answer_headers = answer.status, answer.getheaders()
        finally:
            upstream.close()
        command = urlsplit(self.path).path
        lie = self.server.add_cid
        if command.endswith("/add") and status == 200:
            self.server.added.extend(_hashes(bytes(content)))
        if lie is not None and command.endswith("/add") and status == 200:
            content = bytearray(_with_hash(bytes(content), lie))
            self.server.tampered += 1
        elif command.endswith("/block/get") and status == 200 and content:
            content[len(content) // 2] ^= 0x01
            self.server.tampered += 1
        self.send_response(status)
        for key, value in answer_headers:
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _fail(self) -> None:
        """Answer as a node with a full disk does, without forwarding."""
        answer = json.dumps(
            {"Message": "no space left on device", "Code": 0, "Type": "error"}
        ).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.server.tampered += 1

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is for the test."""


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int, *, add_cid: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.add_cid = add_cid
        self.fail_adds = False
        self.added: list[str] = []
        self.tampered = 0


# Answered for every add when the proxy lies about CIDs: the empty raw block.
WRONG_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def _hashes(answer: bytes) -> list[str]:
    return [json.loads(line).get("Hash", "") for line in answer.splitlines()]


def _with_hash(answer: bytes, cid: str) -> bytes:
    lines = []
    for line in answer.splitlines():
        entry = json.loads(line)
        if "Hash" in entry:
            entry["Hash"] = cid
        lines.append(json.dumps(entry).encode())
    return b"\n".join(lines) + b"\n"


class TamperingProxy(_Served):
    """Forwards to the node at ``upstream`` and damages every block it returns,
    or, with ``wrong_add_cid``, names a wrong CID in every ``add`` answer.
    Setting ``add_cid`` names that CID in every ``add`` answer from then on
    (None: the node's own answers again); setting ``fail_adds`` answers every
    ``add`` with an error, as a node whose disk is full, until it is unset.

    ``tampered`` counts the answers changed, so a test can show the damaged
    path was taken.
    """

    def __init__(self, upstream: str, *, wrong_add_cid: bool = False) -> None:
        self._server = _ProxyServer(
            loopback_port(upstream), add_cid=WRONG_CID if wrong_add_cid else None
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def tampered(self) -> int:
        return self._server.tampered

    @property
    def add_cid(self) -> str | None:
        return self._server.add_cid

    @add_cid.setter
    def add_cid(self, cid: str | None) -> None:
        self._server.add_cid = cid

    @property
    def added(self) -> list[str]:
        """The CIDs the node itself named for every ``add`` that went through."""
        return self._server.added

    @property
    def fail_adds(self) -> bool:
        return self._server.fail_adds

    @fail_adds.setter
    def fail_adds(self, fail: bool) -> None:
        self._server.fail_adds = fail

    def _stop_serving(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class PrivateNode:
    """A real node of one test module's own, which it may stop and start.

    The first start takes any free port; later starts reuse it, so a vault
    configured with ``url`` finds the node again.
    """

    def __init__(self, state: Path) -> None:
        self.env = dict(os.environ)
        self.env.setdefault("IPFS_NODE_DIR", str(REPO / ".ipfs-node"))
        self.env["IPFS_NODE_STATE"] = str(state)
        self.env["IPFS_API_PORT"] = "0"
        self.url = ""

    def _run(self, command: str, timeout: float) -> str:
        done = subprocess.run(
            [str(SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            message = f"scripts/ipfs-node {command} exited {done.returncode}:\n{tail}"
            if os.environ.get("CI"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        return done.stdout.strip()

    def start(self) -> str:
        url = self._run("start", 90)
        if self.url:
            assert url == self.url
        else:
            self.url = url
            self.env["IPFS_API_PORT"] = str(loopback_port(url))
        return url

    def stop(self) -> None:
        self._run("stop", 60)

    def running(self) -> bool:
        done = subprocess.run(
            [str(SCRIPT), "status"],
            env=self.env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0
