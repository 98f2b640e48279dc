"""``jwtfs status`` and ``jwtfs flush`` through the real command: which node
they ask, how long they may take, and what they say when it is away.

Vaults pin to the session node (``ipfs_api``) or to a closed loopback port (a
node that is down). Node misbehaviour a real node cannot be made to show comes
from the named fakes of ``fakes.py``: ``TricklingNode`` answers a byte every
2 s, ``UnacceptingNode`` never completes a connection.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import needs_fuse
from tests.harness import VaultHarness, new_vault
from tests.ipfs.fakes import TricklingNode


def status_json(
    harness: VaultHarness, env: dict[str, str] | None = None
) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        harness.jwtfs("status", "--json", env=env).stdout
    )
    return report


def poll(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


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
