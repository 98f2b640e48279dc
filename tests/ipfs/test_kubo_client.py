"""KuboClient against a real IPFS node on loopback, and against named faults.

The node is the one ``ipfs_api`` gives (see conftest). Its answers for add
must equal what ``jwtfs.blocks.unixfs`` computes locally, byte for byte. The
fault tests use a closed loopback port, a loopback server that accepts and
never answers, and transports wrapping the real one that damage answers.
"""

from __future__ import annotations

import logging
import random
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
import trio

from jwtfs.blocks.car import write_car
from jwtfs.blocks.cid import RAW, Cid, cid_for_block
from jwtfs.blocks.store import BlockStore
from jwtfs.blocks.unixfs import CHUNK_SIZE, Dag, build_dag_from_file
from jwtfs.errors import IntegrityError, RemoteError
from jwtfs.remote.kubo import (
    MAX_BLOCK_PUT,
    KuboClient,
    NodeResponseError,
    NodeTimeoutError,
    NodeUnreachableError,
)
from tests.ipfs.fakes import TricklingNode

MIB = 1024 * 1024
SIZES = [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, MIB + 1, 3 * MIB]


def write_random(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


async def add_checked(
    kubo: KuboClient, path: Path, unpin_after: list[Cid]
) -> tuple[Cid, Dag]:
    """Add ``path``, check the node's root and Size against the local DAG."""
    dag = build_dag_from_file(path)
    root, size = await kubo.add_stream(path)
    unpin_after.append(root)
    assert (root, size) == (dag.root, dag.size)
    return root, dag


class TamperingTransport(httpx.AsyncBaseTransport):
    """Fault injection: flips the first byte of every block/get answer."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.tampered = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/block/get") or response.status_code != 200:
            return response
        body = bytearray(await response.aread())
        await response.aclose()
        body[0] ^= 0x01
        self.tampered += 1
        return httpx.Response(response.status_code, content=bytes(body))

    async def aclose(self) -> None:
        await self.inner.aclose()


class TruncatingTransport(httpx.AsyncBaseTransport):
    """Fault injection: drops the last byte of every cat answer, as a stream
    that ended early with its error in the (unreadable) trailer would look."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/cat"):
            return response
        body = await response.aread()
        await response.aclose()
        return httpx.Response(response.status_code, content=body[:-1])

    async def aclose(self) -> None:
        await self.inner.aclose()


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests through and keeps their headers."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.headers: list[httpx.Headers] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def serve_accept_and_never_answer(
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fault injection: a loopback server that accepts and then stays silent."""

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(hold, listeners)


def closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_version_is_reported(kubo: KuboClient) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", await kubo.version())


@pytest.mark.parametrize("size", SIZES)
async def test_add_stream_gives_the_local_root_and_size_and_pins(
    kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path, size: int
) -> None:
    path = tmp_path / "stream"
    write_random(path, size, seed=size)
    root, _ = await add_checked(kubo, path, unpin_after)
    assert await kubo.pin_ls(root) == {root}
    assert root in await kubo.pin_ls()


@pytest.mark.parametrize("size", [1, CHUNK_SIZE + 1, MIB + 1, 3 * MIB])
async def test_cat_ranges_equal_the_file(
    kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path, size: int
) -> None:
    path = tmp_path / "stream"
    data = write_random(path, size, seed=size + 7)
    root, _ = await add_checked(kubo, path, unpin_after)
    ranges = [
        (0, 100),
        (max(CHUNK_SIZE - 50, 0), 100),
        (max(size - 10, 0), 100),
        (size, 10),
        (size + 5, 10),
        (0, size + 1),
    ]
    for offset, length in ranges:
        expected = data[offset : offset + length]
        assert await kubo.cat(root, offset, length, size=size) == expected
        assert await kubo.cat(root, offset, length) == expected
    assert await kubo.cat(root, 0, 0) == b""
    assert await kubo.stream_size(root) == size


async def test_cat_of_the_empty_stream_is_empty(
    kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path
) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    root, _ = await add_checked(kubo, path, unpin_after)
    assert await kubo.stream_size(root) == 0
    assert await kubo.cat(root, 0, 10) == b""


async def test_block_get_verifies_every_leaf_and_node(
    kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path
) -> None:
    path = tmp_path / "stream"
    data = write_random(path, 3 * MIB + 12345, seed=3)
    _, dag = await add_checked(kubo, path, unpin_after)
    assert len(dag.leaves) == 13
    for leaf in dag.leaves:
        expected = data[leaf.offset : leaf.offset + leaf.length]
        assert await kubo.block_get(leaf.cid) == expected
    for cid, node in dag.nodes.items():
        assert await kubo.block_get(cid) == node


async def test_block_put_round_trip(kubo: KuboClient) -> None:
    for data in (b"jwtfs block/put round trip", random.Random(5).randbytes(CHUNK_SIZE)):
        cid = await kubo.block_put(data)
        assert cid == cid_for_block(RAW, data)
        assert await kubo.block_get(cid) == data


async def test_block_put_refuses_blocks_over_the_limit(kubo: KuboClient) -> None:
    with pytest.raises(ValueError, match="over"):
        await kubo.block_put(bytes(MAX_BLOCK_PUT + 1))


async def test_pin_rm_unlists_and_is_idempotent(
    kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path
) -> None:
    path = tmp_path / "stream"
    write_random(path, CHUNK_SIZE + 1, seed=11)
    root, _ = await add_checked(kubo, path, unpin_after)
    await kubo.pin_rm(root)
    assert await kubo.pin_ls(root) == set()
    assert root not in await kubo.pin_ls()
    await kubo.pin_rm(root)
    await kubo.pin_add(root)
    assert await kubo.pin_ls(root) == {root}


async def test_repo_gc_drops_unpinned_and_keeps_pinned(
    ipfs_api: str, kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path
) -> None:
    kept_data = write_random(tmp_path / "kept", CHUNK_SIZE + 1, seed=21)
    write_random(tmp_path / "dropped", CHUNK_SIZE + 1, seed=22)
    kept, _ = await add_checked(kubo, tmp_path / "kept", unpin_after)
    dropped, dropped_dag = await add_checked(kubo, tmp_path / "dropped", unpin_after)
    await kubo.pin_rm(dropped)

    await kubo.repo_gc()

    # An online Kubo would look for the block on the network: keep it short.
    async with KuboClient(ipfs_api, timeout=3.0) as short:
        with pytest.raises(RemoteError):
            await short.block_get(dropped)
        with pytest.raises(RemoteError):
            await short.block_get(dropped_dag.leaves[0].cid)
    assert await kubo.cat(kept, 0, len(kept_data)) == kept_data


async def test_dag_import_of_a_local_car_pins_its_root(
    kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path
) -> None:
    store = BlockStore(tmp_path / "store")
    data = write_random(tmp_path / "stream", 3 * CHUNK_SIZE + 99, seed=31)
    dag = store.add_stream(tmp_path / "stream", durable=False)
    car = tmp_path / "stream.car"
    with car.open("wb") as out:
        write_car(store, dag.root, out)

    assert await kubo.dag_import(car) == [dag.root]
    unpin_after.append(dag.root)
    assert await kubo.pin_ls(dag.root) == {dag.root}
    assert await kubo.cat(dag.root, 0, len(data)) == data


async def test_error_status_carries_the_node_message(
    kubo: KuboClient, tmp_path: Path
) -> None:
    garbage = tmp_path / "not.car"
    garbage.write_bytes(b"this is not a CAR file")
    with pytest.raises(NodeResponseError) as caught:
        await kubo.dag_import(garbage)
    assert caught.value.status == 500
    assert caught.value.node_message
    assert caught.value.node_message in str(caught.value)


class ForgingTransport(httpx.AsyncBaseTransport):
    """Fault injection: every answer is an error whose message tries to forge
    log lines and terminal escapes, as a hostile node or proxy could."""

    MESSAGE = "disk full\n2026-01-01 ERROR forged line\x1b[31m\r" * 50

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"Message": self.MESSAGE, "Type": "error"})


@pytest.mark.parametrize("body", ["json", "text"])
async def test_a_node_message_cannot_forge_log_lines(body: str) -> None:
    class Transport(ForgingTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if body == "json":
                return await super().handle_async_request(request)
            return httpx.Response(502, content=self.MESSAGE.encode())

    async with KuboClient("http://127.0.0.1:9", transport=Transport()) as client:
        with pytest.raises(NodeResponseError) as caught:
            await client.version()
    text = str(caught.value)
    assert "disk full" in text
    assert text.isprintable(), repr(text)
    assert len(text) < 400


async def test_unreachable_node_fails_fast() -> None:
    url = f"http://127.0.0.1:{closed_loopback_port()}"
    async with KuboClient(url, timeout=10.0) as client:
        started = time.monotonic()
        with pytest.raises(NodeUnreachableError) as caught:
            await client.version()
        assert time.monotonic() - started < 1.0
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert url in str(caught.value)


async def test_silent_node_times_out_within_the_timeout() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_accept_and_never_answer)
        async with KuboClient(f"http://127.0.0.1:{port}", timeout=1.0) as client:
            started = time.monotonic()
            with pytest.raises(NodeTimeoutError) as caught:
                await client.version()
            elapsed = time.monotonic() - started
        nursery.cancel_scope.cancel()
    assert 1.0 <= elapsed < 2.0
    assert "did not answer version within 1" in str(caught.value)
    # httpx's read timeout and the answer's own deadline end together here.
    assert caught.value.__cause__ is None or isinstance(
        caught.value.__cause__, httpx.ReadTimeout
    )


TRICKLE_INTERVAL = 0.2


@pytest.mark.parametrize("head_at_once", [False, True], ids=["head", "body"])
@pytest.mark.parametrize("command", ["version", "add", "pin/add", "block/get"])
async def test_a_trickling_answer_times_out_within_the_timeout(
    command: str, head_at_once: bool, tmp_path: Path
) -> None:
    """Node misbehaviour a real node cannot be made to show: every read gets a
    byte well within the read timeout, but the answer never ends."""
    path = tmp_path / "stream"
    write_random(path, CHUNK_SIZE + 1, seed=71)
    cid = cid_for_block(RAW, b"trickle")
    timeout_message = "too slowly" if head_at_once else "did not answer .* within 1 s"
    calls = {
        "version": lambda client: client.version(),
        "add": lambda client: client.add_stream(path),
        "pin/add": lambda client: client.pin_add(cid),
        "block/get": lambda client: client.block_get(cid),
    }
    with TricklingNode(interval=TRICKLE_INTERVAL, head_at_once=head_at_once) as node:
        async with KuboClient(node.url, timeout=1.0) as client:
            started = time.monotonic()
            # The test's own limit, so a client that waits forever fails.
            with (
                trio.fail_after(10),
                pytest.raises(NodeTimeoutError, match=timeout_message) as caught,
            ):
                await calls[command](client)
            elapsed = time.monotonic() - started
        assert node.requests == 1
    assert 1.0 <= elapsed < 2.0
    assert node.url in str(caught.value)


async def test_a_slow_answer_that_keeps_advancing_is_not_cut_short() -> None:
    """A pin that fetches a large DAG reports progress for as long as it takes;
    only an answer that stops bringing whole entries times out."""
    cid = cid_for_block(RAW, b"progress")
    lines = [b'{"Progress": %d}\n' % i for i in range(6)]
    answer = b"".join([*lines, b'{"Pins": ["%s"]}\n' % str(cid).encode()])
    with TricklingNode(
        interval=0.4, head_at_once=True, answer=answer, step="line"
    ) as node:
        async with KuboClient(node.url, timeout=1.0) as client:
            started = time.monotonic()
            await client.pin_add(cid)
            elapsed = time.monotonic() - started
    assert elapsed > 2.0


async def test_tampered_block_is_refused(
    ipfs_api: str, kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path
) -> None:
    path = tmp_path / "stream"
    write_random(path, CHUNK_SIZE + 1, seed=41)
    root, dag = await add_checked(kubo, path, unpin_after)
    transport = TamperingTransport()
    async with KuboClient(ipfs_api, transport=transport) as client:
        with pytest.raises(IntegrityError):
            await client.block_get(dag.leaves[1].cid)
        with pytest.raises(IntegrityError):
            await client.stream_size(root)
    assert transport.tampered == 2


async def test_short_cat_answer_is_refused(
    ipfs_api: str, kubo: KuboClient, unpin_after: list[Cid], tmp_path: Path
) -> None:
    path = tmp_path / "stream"
    write_random(path, 2 * CHUNK_SIZE, seed=51)
    root, _ = await add_checked(kubo, path, unpin_after)
    async with KuboClient(ipfs_api, transport=TruncatingTransport()) as client:
        with pytest.raises(NodeResponseError, match="gave 99 of 100 bytes"):
            await client.cat(root, CHUNK_SIZE - 50, 100, size=2 * CHUNK_SIZE)


async def test_authorization_is_sent_and_never_shown(
    ipfs_api: str,
    unpin_after: list[Cid],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "Bearer test-only-not-a-real-token"
    caplog.set_level(logging.DEBUG)
    transport = RecordingTransport()
    path = tmp_path / "stream"
    write_random(path, 10, seed=61)
    async with KuboClient(
        ipfs_api, authorization=secret, transport=transport
    ) as client:
        root, _ = await client.add_stream(path)
        unpin_after.append(root)
        await client.pin_rm(root)
        assert "test-only" not in repr(client)
    assert [headers["authorization"] for headers in transport.headers] == [secret] * 2

    closed = f"http://127.0.0.1:{closed_loopback_port()}"
    async with KuboClient(closed, authorization=secret) as client:
        with pytest.raises(NodeUnreachableError) as caught:
            await client.version()
    assert "test-only" not in str(caught.value)
    assert "test-only" not in caplog.text
