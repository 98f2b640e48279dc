"""Crash campaign: ``kill -9`` of the daemon mid-workload loses nothing committed.

Each round runs a mixed workload (create, overwrite, write + fsync + write,
rename, unlink, truncate) in a background thread, and SIGKILLs the daemon at
a random moment. Then the vault is mounted again and every file must hold
exactly what its last finished operation left, and ``jwtfs fsck --no-repair``
must find nothing once the vault is unmounted again (a round where it does
counts as failed, and ``jwtfs fsck`` then repairs the vault, so that each
round is judged on its own crash).

The workload writes a journal (outside the mount) before and after each
operation. An operation is a list of *stages*, the states its paths pass
through: e.g. an overwrite goes from the old content through an empty file
(the kernel may truncate on open as a separate, committed step) to the new
content. A stage counts as reached only once the system call that commits it
(close, fsync, rename, unlink, ftruncate) has returned: the journal then
records ``sync`` or ``done``. After a crash, the paths of the operation in
flight may be in any stage from the last one reached onwards; every other
path must be exactly as the journal says.

``JWTFS_CRASH_ROUNDS`` sets the number of rounds (default 8) and
``JWTFS_CRASH_SEED`` repeats a campaign; the seed is printed either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_fuse
from tests.harness import VaultHarness

pytestmark = [needs_fuse, pytest.mark.slow]

ROUNDS = int(os.environ.get("JWTFS_CRASH_ROUNDS", "8"))
DIRS = ("d0", "d1")
PATHS = (
    *(f"f{i}" for i in range(6)),
    *(f"d0/g{i}" for i in range(3)),
    *(f"d1/h{i}" for i in range(3)),
)
# Sizes around the segment (64 KiB) and chunk (256 KiB) boundaries, and small.
SIZES = (0, 1, 100, 65535, 65536, 65537, 200_000, 262_144, 262_145, 700_000)
# The kill comes this long after the workload starts (seconds).
KILL_AFTER = (0.05, 1.5)
JOIN_SECONDS = 30.0

Hash = str | None
Stage = dict[str, Hash]


def digest(content: bytes | None) -> Hash:
    return None if content is None else hashlib.sha256(content).hexdigest()


class Workload:
    """Random operations on the mount through one directory descriptor.

    Every call is relative to ``root_fd``, a descriptor of the mount's root,
    so once the mount is gone (lazily unmounted after the kill) each call
    fails instead of writing into the empty directory underneath.
    """

    def __init__(
        self,
        root_fd: int,
        journal: Path,
        content: dict[str, bytes | None],
        rng: random.Random,
        killed: threading.Event,
    ) -> None:
        self.root_fd = root_fd
        self.journal_path = journal
        self.content = content
        self.rng = rng
        self.killed = killed
        self.ops = 0
        self.error: str | None = None
        self._op = 0
        self._journal = journal.open("w")
        self._record(
            {"at": "start", "state": {p: digest(c) for p, c in content.items()}}
        )

    def _record(self, entry: dict[str, Any]) -> None:
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()

    def begin(self, kind: str, stages: list[dict[str, bytes | None]]) -> None:
        self._op += 1
        hashed = [{p: digest(c) for p, c in stage.items()} for stage in stages]
        self._record({"at": "begin", "op": self._op, "kind": kind, "stages": hashed})

    def reached(self, stage: int) -> None:
        self._record({"at": "sync", "op": self._op, "stage": stage})

    def done(self, final: dict[str, bytes | None]) -> None:
        self.content.update(final)
        self._record({"at": "done", "op": self._op})
        self.ops += 1

    def run(self) -> None:
        operations: list[Callable[[], None]] = [
            self.overwrite,
            self.overwrite,
            self.write_fsync_write,
            self.rename,
            self.unlink,
            self.truncate,
        ]
        try:
            while not self.killed.is_set():
                self.rng.choice(operations)()
        except OSError as err:
            if not self.killed.is_set():
                self.error = f"{err!r} before the kill"
        finally:
            self._journal.close()

    def existing(self) -> list[str]:
        return [p for p, c in self.content.items() if c is not None]

    def overwrite(self) -> None:
        path = self.rng.choice(PATHS)
        new = self.rng.randbytes(self.rng.choice(SIZES))
        self.begin("overwrite", [{path: self.content[path]}, {path: b""}, {path: new}])
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=self.root_fd
        )
        try:
            _write_all(fd, new)
        finally:
            os.close(fd)
        self.done({path: new})

    def write_fsync_write(self) -> None:
        paths = self.existing()
        if not paths:
            return
        path = self.rng.choice(paths)
        old = self.content[path]
        assert old is not None
        first = self.rng.randbytes(self.rng.choice(SIZES[1:]))
        second = self.rng.randbytes(self.rng.choice(SIZES[1:6]))
        at = self.rng.randrange(len(old) + 1)
        middle = _patched(old, at, first)
        end = _patched(middle, len(middle), second)
        self.begin("write-fsync-write", [{path: old}, {path: middle}, {path: end}])
        fd = os.open(path, os.O_WRONLY, dir_fd=self.root_fd)
        try:
            os.pwrite(fd, first, at)
            os.fsync(fd)
            self.reached(1)
            os.pwrite(fd, second, len(middle))
        finally:
            os.close(fd)
        self.done({path: end})

    def rename(self) -> None:
        paths = self.existing()
        if not paths:
            return
        source = self.rng.choice(paths)
        target = self.rng.choice([p for p in PATHS if p != source])
        moved = self.content[source]
        before = {source: moved, target: self.content[target]}
        after = {source: None, target: moved}
        self.begin("rename", [before, after])
        os.rename(source, target, src_dir_fd=self.root_fd, dst_dir_fd=self.root_fd)
        self.done(after)

    def unlink(self) -> None:
        paths = self.existing()
        if not paths:
            return
        path = self.rng.choice(paths)
        self.begin("unlink", [{path: self.content[path]}, {path: None}])
        os.unlink(path, dir_fd=self.root_fd)
        self.done({path: None})

    def truncate(self) -> None:
        paths = self.existing()
        if not paths:
            return
        path = self.rng.choice(paths)
        old = self.content[path]
        assert old is not None
        size = self.rng.randrange(len(old) + 70_000)
        new = old[:size] + bytes(max(0, size - len(old)))
        self.begin("truncate", [{path: old}, {path: new}])
        fd = os.open(path, os.O_WRONLY, dir_fd=self.root_fd)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        self.done({path: new})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _patched(old: bytes, at: int, data: bytes) -> bytes:
    grown = old + bytes(max(0, at - len(old)))
    return grown[:at] + data + grown[at + len(data) :]


@dataclass
class Expectation:
    """What the journal says the files hold after the crash."""

    state: dict[str, Hash]
    # The operation in flight at the kill: its paths may be in any of these.
    in_flight: list[Stage] = field(default_factory=list)
    kind: str = ""


def read_journal(path: Path) -> Expectation:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # A line cut short by the end of the workload would fail json.loads above:
    # the journal lives outside the mount, in a process that is not killed.
    expectation = Expectation(dict(lines[0]["state"]))
    for entry in lines[1:]:
        if entry["at"] == "begin":
            expectation.in_flight = entry["stages"]
            expectation.kind = entry["kind"]
        elif entry["at"] == "sync":
            expectation.in_flight = expectation.in_flight[entry["stage"] :]
        else:
            expectation.state.update(expectation.in_flight[-1])
            expectation.in_flight = []
    return expectation


def actual_content(mnt: Path) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for path in PATHS:
        try:
            found[path] = (mnt / path).read_bytes()
        except FileNotFoundError:
            found[path] = None
    return found


def compare(expectation: Expectation, found: dict[str, bytes | None]) -> list[str]:
    """Where the files differ from what the journal allows."""
    problems = []
    flying = set().union(*expectation.in_flight) if expectation.in_flight else set()
    for path in PATHS:
        if path not in flying and digest(found[path]) != expectation.state[path]:
            problems.append(
                f"{path}: holds {_describe(found[path])}, the journal says "
                f"{expectation.state[path]}"
            )
    if flying:
        seen = {p: digest(found[p]) for p in flying}
        if seen not in expectation.in_flight:
            problems.append(
                f"{expectation.kind} in flight: found {seen}, allowed "
                f"{expectation.in_flight}"
            )
    return problems


def _describe(content: bytes | None) -> str:
    if content is None:
        return "nothing (missing)"
    return f"{len(content)} bytes {digest(content)}"


def list_files(mnt: Path) -> set[str]:
    names = set()
    for top, _, files in os.walk(mnt):
        for name in files:
            names.add(str(Path(top, name).relative_to(mnt)))
    return names


@dataclass
class Campaign:
    harness: VaultHarness
    rng: random.Random
    content: dict[str, bytes | None]
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def round(self, number: int) -> None:
        harness = self.harness
        journal = harness.root / f"journal-{number}.jsonl"
        killed = threading.Event()
        root_fd = os.open(harness.mnt, os.O_RDONLY | os.O_DIRECTORY)
        workload = Workload(
            root_fd,
            journal,
            dict(self.content),
            random.Random(self.rng.random()),
            killed,
        )
        worker = threading.Thread(target=workload.run, daemon=True)
        delay = self.rng.uniform(*KILL_AFTER)
        worker.start()
        time.sleep(delay)
        killed.set()
        harness.kill9()
        worker.join(JOIN_SECONDS)
        os.close(root_fd)
        problems = [] if workload.error is None else [workload.error]
        if worker.is_alive():
            problems.append(
                f"the workload still hangs {JOIN_SECONDS:g} s after the kill"
            )
        crashed = self.fsck_kinds()

        harness.mount()
        expectation = read_journal(journal)
        found = actual_content(harness.mnt)
        problems += compare(expectation, found)
        extra = list_files(harness.mnt) - set(PATHS)
        if extra:
            problems.append(f"unexpected files: {sorted(extra)}")
        harness.umount()
        code, report = self.fsck()
        if code != 0:
            leftovers = [
                f"{f['kind']} {f['subject']}" for f in report.get("findings", [])
            ] or report
            problems.append(f"fsck --no-repair exited {code}: {leftovers}")
            # Repaired, so the next round is judged on its own crash only.
            harness.jwtfs("fsck", check=False)
        harness.mount()

        self.content = found
        self.lines.append(
            f"round {number}: kill after {delay:.2f} s, {workload.ops} ops done, "
            f"{expectation.kind or 'nothing'} in flight; fsck before remount: "
            f"{crashed or 'clean'}; {'FAILED' if problems else 'ok'}"
        )
        self.failures += [f"round {number}: {p}" for p in problems]

    def fsck(self) -> tuple[int, dict[str, Any]]:
        result = self.harness.jwtfs("fsck", "--no-repair", "--json", check=False)
        if result.returncode not in (0, 1):
            return result.returncode, {"stderr": result.stderr}
        report: dict[str, Any] = json.loads(result.stdout)
        return result.returncode, report

    def fsck_kinds(self) -> list[str]:
        """What a crash leaves for the next mount to clean up, for the output."""
        _, report = self.fsck()
        return sorted({f["kind"] for f in report.get("findings", [])})


def test_crash_campaign(
    fresh_vault: VaultHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(
        os.environ.get("JWTFS_CRASH_SEED") or random.SystemRandom().randrange(2**32)
    )
    with capsys.disabled():
        print(f"\ncrash campaign seed: {seed} (JWTFS_CRASH_SEED={seed} repeats it)")
    harness = fresh_vault
    harness.set_token(harness.issue(read=("/**",), write=("/**",)))
    harness.mount()
    for name in DIRS:
        (harness.mnt / name).mkdir()
    campaign = Campaign(harness, random.Random(seed), dict.fromkeys(PATHS))
    for number in range(1, ROUNDS + 1):
        campaign.round(number)
    harness.umount()

    with capsys.disabled():
        for line in campaign.lines:
            print(line)
        for failure in campaign.failures:
            print(failure)
        failed_rounds = {f.split(":")[0] for f in campaign.failures}
        print(f"crash campaign: {ROUNDS} rounds, {len(failed_rounds)} failures")
    assert campaign.failures == []


def test_journal_model_allows_exactly_the_stages_reached(tmp_path: Path) -> None:
    """The checker itself: a cut operation allows its reached stages, no others."""
    journal = tmp_path / "journal.jsonl"
    killed = threading.Event()
    content: dict[str, bytes | None] = dict.fromkeys(PATHS)
    content["f0"] = b"old"
    workload = Workload(-1, journal, content, random.Random(1), killed)
    workload.begin(
        "write-fsync-write", [{"f0": b"old"}, {"f0": b"mid"}, {"f0": b"end"}]
    )
    workload.reached(1)
    workload._journal.close()
    expectation = read_journal(journal)
    found = dict(content)
    assert compare(expectation, {**found, "f0": b"mid"}) == []
    assert compare(expectation, {**found, "f0": b"end"}) == []
    assert compare(expectation, {**found, "f0": b"old"}) == [
        f"write-fsync-write in flight: found {{'f0': '{digest(b'old')}'}}, allowed "
        f"[{{'f0': '{digest(b'mid')}'}}, {{'f0': '{digest(b'end')}'}}]"
    ]
    assert compare(expectation, {**found, "f0": b"mid", "f1": b"stray"}) == [
        f"f1: holds 5 bytes {digest(b'stray')}, the journal says None"
    ]
