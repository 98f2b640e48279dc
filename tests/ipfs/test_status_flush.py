"""``jwtfs status`` and ``jwtfs flush`` through the real command: which node
they ask, how long they may take, and what they say when it is away.

Vaults pin to the session node (``ipfs_api``) or to a closed loopback port (a
node that is down). Node misbehaviour a real node cannot be made to show comes
from the named fakes of ``fakes.py``: ``TricklingNode`` answers a byte every
2 s, ``UnacceptingNode`` never completes a connection.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from jwtfs.cli.reports import PROBE_SECONDS
from tests.conftest import needs_fuse
from tests.harness import VaultHarness, new_vault
from tests.ipfs.fakes import TricklingNode, UnacceptingNode

# Time allowed past a limit: starting Python, a loaded CI machine.
MARGIN = 2.0


def timed(
    harness: VaultHarness, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = harness.jwtfs(*args, check=False, env=env, timeout=60)
    return result, time.monotonic() - started


def status_json(
    harness: VaultHarness, env: dict[str, str] | None = None
) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        harness.jwtfs("status", "--json", env=env).stdout
    )
    return report


def status_line(harness: VaultHarness, head: str) -> str:
    """The line of ``jwtfs status`` that starts with ``head``."""
    lines = harness.jwtfs("status").stdout.splitlines()
    found = [line for line in lines if line.split(" ", 1)[0] == head]
    assert len(found) == 1, lines
    return found[0]


def poll(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


# The probe


def test_status_gives_up_on_a_trickling_node_within_the_probe_limit(
    tmp_path: Path,
) -> None:
    with TricklingNode(interval=2.0) as node:
        harness = new_vault(tmp_path, node.url)
        result, elapsed = timed(harness, "status", "--json")
        line = status_line(harness, "node")
        assert node.requests >= 2

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["node"]["reachable"] is False
    assert report["node"]["answer"] == "not answering"
    assert elapsed < PROBE_SECONDS + MARGIN
    assert line.startswith(f"node       {node.url}: not answering (")


def test_status_gives_up_on_a_connection_that_never_completes(
    tmp_path: Path,
) -> None:
    with UnacceptingNode() as node:
        harness = new_vault(tmp_path, node.url)
        result, elapsed = timed(harness, "status", "--json")

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)["node"]
    assert (answer["reachable"], answer["answer"]) == (False, "not answering")
    assert answer["detail"] == f"no answer within {PROBE_SECONDS:g} s"
    assert elapsed < PROBE_SECONDS + MARGIN


# The pin queue


@needs_fuse
def test_a_trickling_add_is_logged_and_given_up_after_the_timeout(
    tmp_path: Path,
) -> None:
    with TricklingNode(interval=2.0, head_at_once=True) as node:
        harness = new_vault(tmp_path, node.url)
        harness.set_config("ipfs", "timeout", 3)
        harness.mount()
        try:
            (harness.mnt / "f.txt").write_bytes(b"to a node that trickles\n")
            poll(
                "a WARNING naming the slow add",
                lambda: harness.log_lines("WARNING"),
                3 + 10,
            )
            state = status_json(harness)["states"]
        finally:
            harness.cleanup()

    assert state in ({"queued": 1}, {"pinning": 1})
    lines = harness.log_lines("WARNING", "ERROR", "CRITICAL")
    assert len(lines) == 1, lines
    assert "IPFS node unreachable" in lines[0]
    assert f"the IPFS node at {node.url} answered add too slowly" in lines[0]
