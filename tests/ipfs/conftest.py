"""A real IPFS node on loopback for the tests in this folder.

``ipfs_api`` is the node's API URL. With ``JWTFS_IPFS_API`` set, that node is
used; it must listen on loopback, and the tests pin, unpin and garbage-collect
on it, so a node holding unpinned data worth keeping is the wrong choice.
Otherwise ``scripts/ipfs-node`` installs the JavaScript node (once, into
``IPFS_NODE_DIR``, by default ``.ipfs-node`` in the checkout) and starts a
throwaway one on a free port with its repo in a temporary folder; it is
stopped when the session ends.

When no node can be had, the tests skip with the reason, except under CI,
where they fail: a broken install must never look green.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from jwtfs.blocks.cid import Cid
from jwtfs.config import is_loopback_url
from jwtfs.remote.kubo import KuboClient
from tests.harness import VaultHarness, new_vault
from tests.ipfs.fakes import PrivateNode

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ipfs-node"
# Room for a cold npm install (22-50 s here) and a slow start (2-5 s here).
INSTALL_TIMEOUT = 600
START_TIMEOUT = 90
# Generous for a loopback node; the tests that want a timeout set their own.
CLIENT_TIMEOUT = 20.0


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"IPFS test node unavailable under CI: {reason}", pytrace=False)
    pytest.skip(f"IPFS test node unavailable: {reason}")


def _script(command: str, env: dict[str, str], timeout: float) -> str:
    """Run ``scripts/ipfs-node COMMAND`` and return its stdout."""
    try:
        done = subprocess.run(
            [str(SCRIPT), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"scripts/ipfs-node {command}: {exc}")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        _unavailable(f"scripts/ipfs-node {command} exited {done.returncode}:\n{tail}")
    return done.stdout


@pytest.fixture(scope="session")
def ipfs_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API base URL of a running node on loopback."""
    external = os.environ.get("JWTFS_IPFS_API")
    if external:
        if not is_loopback_url(external):
            pytest.fail(f"JWTFS_IPFS_API must be a loopback URL, got {external!r}")
        yield external
        return
    env = dict(os.environ)
    env.setdefault("IPFS_NODE_DIR", str(REPO / ".ipfs-node"))
    env["IPFS_NODE_STATE"] = str(tmp_path_factory.mktemp("ipfs-node-state"))
    env["IPFS_API_PORT"] = "0"  # the node binds a free port and prints it
    modules = Path(env["IPFS_NODE_DIR"]) / "node_modules"
    if not all((modules / name).is_dir() for name in ("ipfs-core", "ipfs-http-server")):
        _script("install", env, INSTALL_TIMEOUT)
    url = _script("start", env, START_TIMEOUT).strip()
    try:
        if not is_loopback_url(url):
            pytest.fail(f"scripts/ipfs-node started a node on {url!r}, not loopback")
        yield url
    finally:
        subprocess.run(
            [str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60, check=False
        )


@pytest.fixture
async def kubo(ipfs_api: str) -> AsyncIterator[KuboClient]:
    """A client of the test node."""
    async with KuboClient(ipfs_api, timeout=CLIENT_TIMEOUT) as client:
        yield client


@pytest.fixture
async def unpin_after(kubo: KuboClient) -> AsyncIterator[list[Cid]]:
    """A list of CIDs to unpin when the test ends, so pins do not pile up."""
    cids: list[Cid] = []
    yield cids
    for cid in cids:
        await kubo.pin_rm(cid)


@pytest.fixture
def vault_on_node(tmp_path: Path, ipfs_api: str) -> Iterator[VaultHarness]:
    """A vault pinning to the session node, not mounted yet."""
    harness = new_vault(tmp_path, ipfs_api)
    yield harness
    harness.cleanup()


@pytest.fixture(scope="module")
def private_node(
    tmp_path_factory: pytest.TempPathFactory, ipfs_api: str
) -> Iterator[PrivateNode]:
    """A node of the module's own; ``ipfs_api`` first, so the node is installed."""
    node = PrivateNode(tmp_path_factory.mktemp("private-node"))
    try:
        node.start()
        yield node
    finally:
        node.stop()
