"""``jwtfs status`` and ``jwtfs flush`` through the real command: which node
they ask, how long they may take, and what they say when it is away.

Vaults pin to the session node (``ipfs_api``) or to a closed loopback port (a
node that is down). Node misbehaviour a real node cannot be made to show comes
from the named fakes of ``fakes.py``: ``TricklingNode`` answers a byte every
2 s, ``UnacceptingNode`` never completes a connection.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jwtfs.blocks.cid import Cid
from jwtfs.cli.reports import PROBE_SECONDS
from tests.conftest import needs_fuse
from tests.harness import VaultHarness, new_vault
from tests.ipfs.fakes import TricklingNode, UnacceptingNode, closed_loopback_port

# Time allowed past a limit: starting Python, a loaded CI machine.
MARGIN = 2.0


def down_node() -> str:
    """The URL of a node that is down."""
    return f"http://127.0.0.1:{closed_loopback_port()}"


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


def on_terminal(harness: VaultHarness, *args: str) -> tuple[int, str]:
    """Run ``jwtfs ARGS`` with stderr on a pseudo-terminal; return (code, stderr)."""
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "jwtfs", *args],
            env=harness.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        output = bytearray()
        while True:
            try:
                piece = os.read(master, 4096)
            except OSError as err:
                assert err.errno == errno.EIO
                break
            if not piece:
                break
            output += piece
        code = child.wait(timeout=60)
    finally:
        os.close(master)
    return code, output.decode()


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
    assert line.startswith(f"node       {node.url} (from ipfs.api in ")
    assert ": not answering (" in line


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


# Flush: how long it waits, and what it says meanwhile


@pytest.mark.parametrize("value", ["-5", "-0.5", "nan"])
def test_flush_refuses_a_timeout_that_is_not_zero_or_more_seconds(
    tmp_path: Path, value: str
) -> None:
    harness = new_vault(tmp_path, down_node())
    result, _ = timed(harness, "flush", "--wait", "--timeout", value)
    assert result.returncode == 2
    assert result.stderr == (
        f"jwtfs: --timeout {value}: give the seconds to wait, or 0 for no limit\n"
    )


@needs_fuse
def test_flush_waiting_on_an_unreachable_node_says_so_and_counts_versions(
    tmp_path: Path,
) -> None:
    down = down_node()
    harness = new_vault(tmp_path, down)
    harness.mount()
    try:
        # Two versions of one file: retention keeps the older one, and it is
        # pushed too, so both count.
        (harness.mnt / "f.txt").write_bytes(b"first\n")
        (harness.mnt / "f.txt").write_bytes(b"second\n")
        backlog = status_json(harness)["backlog"]
        backlog_line = status_line(harness, "backlog")
        daemon, elapsed = timed(harness, "flush", "--wait", "--timeout", "4")
        code, terminal = on_terminal(harness, "flush", "--wait", "--timeout", "2")
    finally:
        harness.cleanup()
    here, _ = timed(harness, "flush", "--wait", "--timeout", "4")

    assert backlog == {
        "files": 1,
        "versions": 2,
        "bytes": (32 + 6 + 28) + (32 + 7 + 28),
    }
    assert backlog_line == "backlog    1 file, 2 versions (133 B) to pin"
    waiting = (
        f"jwtfs: waiting for 2 versions to be pinned; the IPFS node at {down} "
        "is unreachable since "
    )
    for result in (daemon, here):
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        assert len(lines) == 2, lines
        assert lines[0].startswith(waiting)
        assert lines[1] == "jwtfs: 2 versions still wait to be pinned"
    assert elapsed < 4 + MARGIN
    assert code == 1
    assert f"\r2 versions (133 B) to pin; the IPFS node at {down} is unreachable" in (
        terminal
    )


@needs_fuse
def test_flush_stops_waiting_when_the_daemon_goes_away(tmp_path: Path) -> None:
    harness = new_vault(tmp_path, down_node())
    harness.mount()
    waiting = None
    try:
        (harness.mnt / "f.txt").write_bytes(b"queued while the node is down\n")
        waiting = subprocess.Popen(
            [sys.executable, "-m", "jwtfs", "flush", "--wait"],
            env=harness.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        poll(
            "the daemon finds the node down",
            lambda: (
                status_json(harness)["node"].get("last_seen_state") == "unreachable"
            ),
            15,
        )
        harness.umount()
        _, stderr = waiting.communicate(timeout=10)
    finally:
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        harness.cleanup()

    assert waiting.returncode == 1
    assert stderr.splitlines()[-1] == (
        f"jwtfs: {harness.mnt}: its daemon stopped before the backlog was pinned; "
        "mount it again to push the rest"
    )


@needs_fuse
def test_flush_of_a_mount_without_a_node_fails_at_once(tmp_path: Path) -> None:
    harness = new_vault(tmp_path, down_node())
    harness.mount()
    (harness.mnt / "f.txt").write_bytes(b"queued while the node is down\n")
    harness.umount()
    harness.mount("--ipfs-api", "none")
    try:
        result, elapsed = timed(harness, "flush", "--wait")
        node_line = status_line(harness, "node")
    finally:
        harness.cleanup()

    mnt = harness.mnt
    assert result.returncode == 2
    assert result.stderr == (
        f"jwtfs: {mnt} was mounted without an IPFS node, so nothing is pinned; "
        f"run 'jwtfs umount {mnt}', then mount it with --ipfs-api URL\n"
    )
    assert elapsed < MARGIN
    assert node_line == f"node       none ({mnt} was mounted without an IPFS node)"


@pytest.mark.parametrize("setting", ["IPFS_API=none", "IPFS_API=", "ipfs.api="])
def test_without_a_node_status_and_flush_name_the_setting_to_change(
    tmp_path: Path, setting: str
) -> None:
    harness = new_vault(tmp_path, "" if setting == "ipfs.api=" else down_node())
    harness.env.pop("IPFS_API", None)
    env = None
    if setting.startswith("IPFS_API="):
        env = {"IPFS_API": setting.removeprefix("IPFS_API=")}
    result, elapsed = timed(harness, "flush", "--wait", env=env)
    report = status_json(harness, env=env)

    if env is not None:
        why = f"IPFS_API is {env['IPFS_API']!r}"
        fix = "set IPFS_API to the node's URL"
    else:
        why = f"ipfs.api is empty in {harness.config_dir / 'config.toml'}"
        fix = "set ipfs.api to the node's URL"
    assert result.returncode == 2
    assert result.stderr == f"jwtfs: {why}, so nothing is pinned; {fix}\n"
    assert elapsed < MARGIN
    assert report["node"] == {
        "api": None,
        "source": "IPFS_API" if env else f"ipfs.api in {report['config']}",
        "why_none": why,
    }


# Which node: the one the running mount uses


@needs_fuse
async def test_status_and_flush_ask_the_node_the_mount_uses(
    tmp_path: Path, ipfs_api: str, unpin_after: list[Cid]
) -> None:
    harness = new_vault(tmp_path, down_node())
    secret = "Bearer test-only-not-a-real-token"
    harness.mount("--ipfs-api", ipfs_api, env={"IPFS_API_AUTHORIZATION": secret})
    try:
        (harness.mnt / "f.txt").write_bytes(b"pinned where the mount says\n")
        node = status_json(harness)["node"]
        flushed, _ = timed(harness, "flush", "--wait", "--timeout", "30")
        report = status_json(harness)
        records = list((harness.runtime / "jwtfs").glob("mount-*.json"))
        record = records[0].read_text()
    finally:
        harness.cleanup()
    unpin_after.extend(Cid(str(r["cid"])) for r in harness_index(harness))
    if report["snapshot"] is not None:
        unpin_after.append(Cid(report["snapshot"]["cid"]))

    assert node["api"] == ipfs_api
    assert node["source"] == f"the mount at {harness.mnt}"
    assert node["reachable"] is True
    assert flushed.returncode == 0, flushed.stderr
    assert report["states"] == {"pinned": 1}
    assert json.loads(record)["ipfs_api"] == ipfs_api
    assert secret not in record and "Bearer" not in record


def harness_index(harness: VaultHarness) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(harness.jwtfs("index", "--json").stdout)
    return rows


@needs_fuse
@pytest.mark.parametrize("command", ["status", "flush"])
def test_a_path_that_is_not_a_mount_of_the_vault_is_refused(
    tmp_path: Path, ipfs_api: str, command: str
) -> None:
    harness = new_vault(tmp_path, ipfs_api)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    paths = [tmp_path / "does-not-exist", elsewhere]
    unmounted = [timed(harness, command, str(path))[0] for path in paths]
    harness.mount()
    try:
        mounted = [timed(harness, command, str(path))[0] for path in paths]
        own, _ = timed(harness, command, str(harness.mnt))
    finally:
        harness.cleanup()

    vault = f"the vault in {harness.data_dir}"
    for results, state in (
        (unmounted, "it is not mounted"),
        (mounted, f"it is mounted at {harness.mnt}"),
    ):
        for path, result in zip(paths, results, strict=True):
            assert result.returncode == 2
            assert result.stderr == (
                f"jwtfs: {path}: not a mount of {vault} ({state}); "
                "name its mountpoint, or none\n"
            )
    assert own.returncode == 0, own.stderr


@needs_fuse
def test_status_leaves_out_what_a_daemon_that_is_gone_saw(tmp_path: Path) -> None:
    harness = new_vault(tmp_path, down_node())
    harness.mount()
    try:
        (harness.mnt / "f.txt").write_bytes(b"queued\n")
        poll(
            "the daemon finds the node down",
            lambda: (
                status_json(harness)["node"].get("last_seen_state") == "unreachable"
            ),
            15,
        )
    finally:
        harness.cleanup()

    report = status_json(harness)
    assert report["mount"] is None
    assert "last_seen_state" not in report["node"]
    assert "since" not in report["node"]


# What left the machine


@needs_fuse
async def test_status_does_not_say_nothing_left_once_a_snapshot_is_pinned(
    tmp_path: Path, ipfs_api: str, unpin_after: list[Cid]
) -> None:
    harness = new_vault(tmp_path, ipfs_api)
    harness.mount()
    try:
        poll(
            "the first index snapshot is pinned",
            lambda: status_json(harness)["snapshot"] is not None,
            30,
        )
        report = status_json(harness)
        text = harness.jwtfs("status").stdout
    finally:
        harness.cleanup()
    unpin_after.append(Cid(report["snapshot"]["cid"]))

    assert report["states"] == {}
    assert report["left_machine"] is True
    assert "nothing has left this machine" not in text


def test_status_of_a_vault_without_a_node_says_nothing_left(tmp_path: Path) -> None:
    harness = new_vault(tmp_path, "")
    harness.env.pop("IPFS_API", None)
    report = status_json(harness)
    text = harness.jwtfs("status").stdout
    assert report["left_machine"] is False
    assert "network    nothing has left this machine" in text
