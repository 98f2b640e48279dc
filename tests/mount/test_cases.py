"""The filesystem cases of ``cases/CASES.md`` that need no IPFS node, on a real mount.

Each test is named after its case. Boundary cases run with sizes around the
segment size ``S`` and with 4096. Where the case asks for it, the state is
checked again after a remount.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jwtfs.crypto.segments import DEFAULT_SEGMENT_SIZE as S
from tests.harness import VaultHarness

BOUNDARY = [S - 1, S, S + 1, 2 * S, 4096]
BOUNDARY_IDS = ["S-1", "S", "S+1", "2S", "4096"]


def _errno_of(call: object, *args: object) -> int:
    assert callable(call)
    with pytest.raises(OSError) as err:
        call(*args)
    return int(err.value.errno or 0)


def _sh(
    script: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _index(vault: VaultHarness) -> list[dict[str, object]]:
    rows = json.loads(vault.jwtfs("index", "--json").stdout)
    assert isinstance(rows, list)
    return rows


def _stream_files(vault: VaultHarness) -> set[str]:
    root = vault.data_dir / "store" / "streams"
    return {p.name for p in root.glob("*/*") if p.is_file()}


# CASE-01


def test_case_01_rename_over_existing_name(vault: VaultHarness) -> None:
    p, t = vault.mnt / "doc.txt", vault.mnt / ".doc.txt.swp~"
    p.write_text("old\n")
    keep = os.open(p, os.O_RDONLY)
    try:
        old_cid = {r["path"]: r["cid"] for r in _index(vault)}["/doc.txt"]
        with open(t, "w") as f:
            f.write("new\n")
            f.flush()
            os.fsync(f.fileno())
        ino_tmp = os.stat(t).st_ino
        os.rename(t, p)
        assert os.listdir(vault.mnt) == ["doc.txt"]
        assert p.read_text() == "new\n"
        assert os.stat(p).st_ino == ino_tmp
        assert os.pread(keep, 100, 0) == b"old\n"
    finally:
        os.close(keep)

    shell = _sh(
        "printf 'old\\n' > a.txt; printf 'new\\n' > .a.txt.tmp; mv -f .a.txt.tmp a.txt",
        vault.mnt,
    )
    assert shell.returncode == 0, shell.stderr
    assert (vault.mnt / "a.txt").read_text() == "new\n"

    vault.remount()
    assert p.read_text() == "new\n"
    assert sorted(os.listdir(vault.mnt)) == ["a.txt", "doc.txt"]
    rows = [r for r in _index(vault) if r["path"] == "/doc.txt"]
    assert len(rows) == 1
    cids = {r["cid"] for r in _index(vault)}
    assert old_cid not in cids
    assert old_cid not in _stream_files(vault)


def test_case_01_rename_noreplace_onto_existing(vault: VaultHarness) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    a, b = vault.mnt / "a", vault.mnt / "b"
    a.write_text("A")
    b.write_text("B")
    rc = libc.renameat2(-100, bytes(a), -100, bytes(b), 1)
    assert rc == -1
    assert ctypes.get_errno() == errno.EEXIST
    assert a.read_text() == "A"
    assert b.read_text() == "B"


# CASE-03


def test_case_03_vim_swap_file(vault: VaultHarness) -> None:
    mnt = vault.mnt
    sw = f"{mnt}/.notes.md.swp"
    (mnt / "notes.md").write_text("hello\n")
    fd = os.open(sw, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        assert os.pwrite(fd, b"b0VIM 9.0".ljust(4096, b"\0"), 0) == 4096
        assert os.pwrite(fd, b"\1" * 4096, 4096) == 4096
        assert os.pwrite(fd, b"\2" * 4096, 3 * 4096) == 4096
        os.fsync(fd)
        assert os.pread(fd, 4096, 2 * 4096) == b"\0" * 4096
        assert os.fstat(fd).st_size == 4 * 4096
        assert (
            _errno_of(os.open, sw, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            == errno.EEXIST
        )
    finally:
        os.close(fd)
    os.unlink(sw)
    assert os.listdir(mnt) == ["notes.md"]

    start = time.monotonic()
    result = subprocess.run(
        [
            "vim",
            "-u",
            "NONE",
            "-N",
            "-es",
            "-c",
            'call append(line("$"), "world")',
            "-c",
            "wq",
            "notes.md",
        ],
        cwd=mnt,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for code in ("E72", "E200", "E667"):
        assert code not in output
    assert (mnt / "notes.md").read_text() == "hello\nworld\n"
    assert sorted(os.listdir(mnt)) == ["notes.md"]
    assert elapsed < 2.0
    vault.remount()
    assert (mnt / "notes.md").read_text() == "hello\nworld\n"


# CASE-04


def test_case_04_git(vault: VaultHarness, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "MNT": str(vault.mnt)}
    script = """
set -e; cd "$MNT"; mkdir repo; cd repo
git init -q; git config user.email t@example.org; git config user.name t
echo a > a; git add a; git commit -qm one
echo b >> a; git commit -qam two
git gc -q --aggressive; git fsck --full; test -z "$(git status --porcelain)"
git clone -q "$MNT/repo" "$MNT/clone"
test "$(git -C "$MNT/clone" rev-list --count HEAD)" = 2
find "$MNT/repo/.git" -name '*.lock' | grep -q . && exit 1 || true
"""
    result = _sh(script, vault.mnt, env)
    assert result.returncode == 0, result.stdout + result.stderr
    vault.remount()
    fsck = _sh('cd "$MNT/repo" && git fsck --full', vault.mnt, env)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    log = _sh('git -C "$MNT/repo" log --format=%s', vault.mnt, env)
    assert log.returncode == 0, log.stderr
    assert log.stdout == "two\none\n"
    assert (vault.mnt / "clone" / "a").read_text() == "a\nb\n"


# CASE-05


def _same_file(src: Path, dst: Path) -> None:
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns
    assert os.stat(dst).st_size == os.stat(src).st_size


def test_case_05_rsync_inplace(vault: VaultHarness, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(300000))
    (src / "tiny").write_bytes(b"x")
    dst = vault.mnt / "dst"

    def rsync(*extra: str) -> None:
        result = subprocess.run(
            ["rsync", "-a", "--inplace", *extra, f"{src}/", f"{dst}/"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr

    rsync()
    _same_file(src / "big", dst / "big")
    _same_file(src / "tiny", dst / "tiny")

    # rsync skips a file whose size and mtime (in seconds) match, so each change
    # moves the source's mtime on by whole seconds.
    mtime = os.stat(src / "big").st_mtime_ns
    with open(src / "big", "r+b") as f:
        f.seek(150000)
        f.write(b"PATCH")
    os.utime(src / "big", ns=(mtime + 10**10, mtime + 10**10))
    rsync("--no-whole-file")
    _same_file(src / "big", dst / "big")

    os.truncate(src / "big", 1000)
    os.utime(src / "big", ns=(mtime + 2 * 10**10, mtime + 2 * 10**10))
    rsync("--no-whole-file")
    _same_file(src / "big", dst / "big")
    assert os.stat(dst / "big").st_size == 1000

    vault.remount()
    _same_file(src / "big", dst / "big")
    _same_file(src / "tiny", dst / "tiny")


# CASE-06


@pytest.mark.parametrize("size", BOUNDARY, ids=BOUNDARY_IDS)
def test_case_06_truncate_write_truncate(vault: VaultHarness, size: int) -> None:
    p = vault.mnt / "t"
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"A" * size)
        os.ftruncate(fd, 100)
        os.write(fd, b"B" * 10)
        assert os.fstat(fd).st_size == size + 10
        assert os.pread(fd, size - 100, 100) == b"\0" * (size - 100)
        assert os.pread(fd, 20, size) == b"B" * 10
        os.ftruncate(fd, 50)
    finally:
        os.close(fd)
    assert p.read_bytes() == b"A" * 50
    vault.remount()
    assert p.read_bytes() == b"A" * 50
    assert "authentication" not in vault.log_text()


def _random_ops(vault: VaultHarness, base: int, seed: int) -> None:
    rng = random.Random(seed)
    sizes = [0, 1, base - 1, base, base + 1, 2 * base, 3 * base + 7]
    p = vault.mnt / "model"
    model = bytearray()
    offset = 0
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for step in range(200):
            op = rng.choice(("write", "ftruncate", "pwrite"))
            n = rng.choice(sizes)
            data = bytes([rng.randrange(1, 256)]) * n
            where = f"seed {seed} step {step}: {op} {n}"
            if op == "write":
                assert os.write(fd, data) == n, where
                if n and offset > len(model):
                    model.extend(b"\0" * (offset - len(model)))
                model[offset : offset + n] = data
                offset += n
            elif op == "ftruncate":
                os.ftruncate(fd, n)
                del model[n:]
                model.extend(b"\0" * (n - len(model)))
            else:
                off = rng.choice(sizes)
                assert os.pwrite(fd, data, off) == n, where
                if n:
                    if off > len(model):
                        model.extend(b"\0" * (off - len(model)))
                    model[off : off + n] = data
            assert os.fstat(fd).st_size == len(model), where
            if step % 10 == 9:
                assert os.pread(fd, len(model) + 10, 0) == bytes(model), where
    finally:
        os.close(fd)
    assert p.read_bytes() == bytes(model)
    vault.remount()
    assert p.read_bytes() == bytes(model)
    log = vault.log_text()
    assert "authentication" not in log
    assert "integrity" not in log


@pytest.mark.parametrize("base", [S, 4096], ids=["S", "4096"])
def test_case_06_randomized_against_model(vault: VaultHarness, base: int) -> None:
    _random_ops(vault, base, seed=base * 7 + 1)


# CASE-07


@pytest.mark.parametrize("size", BOUNDARY, ids=BOUNDARY_IDS)
def test_case_07_write_past_eof(vault: VaultHarness, size: int) -> None:
    p = vault.mnt / "sparse"
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, b"head", 0)
        os.pwrite(fd, b"tail", 5 * size + 3)
    finally:
        os.close(fd)
    expected = b"head" + b"\0" * (5 * size - 1) + b"tail"
    assert len(expected) == 5 * size + 7
    assert p.read_bytes() == expected

    g = vault.mnt / "grown"
    g.write_bytes(b"g" * 10)
    os.truncate(g, size + 3)
    assert g.read_bytes() == b"g" * 10 + b"\0" * (size - 7)

    vault.remount()
    assert p.read_bytes() == expected
    assert g.read_bytes() == b"g" * 10 + b"\0" * (size - 7)


def test_case_07_cp_sparse_always(vault: VaultHarness, tmp_path: Path) -> None:
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.write(b"x")
        f.seek(7 * 2**20)
        f.write(b"y")
    copy = vault.mnt / "copy"
    result = subprocess.run(
        ["cp", "--sparse=always", str(src), str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert copy.read_bytes() == src.read_bytes()
    assert os.stat(copy).st_size == 7 * 2**20 + 1
    vault.remount()
    assert copy.read_bytes() == src.read_bytes()


# CASE-08


def test_case_08_shell_append(vault: VaultHarness) -> None:
    result = _sh(
        "printf 'line1\\nline2\\nline3\\n' > log; echo line4 >> log; cat log", vault.mnt
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line1\nline2\nline3\nline4\n"
    vault.remount()
    assert (vault.mnt / "log").read_text() == "line1\nline2\nline3\nline4\n"


@pytest.mark.parametrize("base", BOUNDARY, ids=BOUNDARY_IDS)
def test_case_08_append_goes_to_true_eof(vault: VaultHarness, base: int) -> None:
    p = vault.mnt / f"ap{base}"
    p.write_bytes(b"x" * base)
    other = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(other, b"y" * 5, base)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            assert os.write(fd, b"Z") == 1
        finally:
            os.close(fd)
    finally:
        os.close(other)
    expected = b"x" * base + b"y" * 5 + b"Z"
    assert p.read_bytes() == expected
    vault.remount()
    assert p.read_bytes() == expected


# CASE-11


def test_case_11_read_after_rename_into_subdir(vault: VaultHarness) -> None:
    p, d = vault.mnt / "f", vault.mnt / "sub"
    open(p, "wb").close()
    os.mkdir(d)
    os.truncate(p, 10)
    fd = os.open(p, os.O_RDWR)
    try:
        os.rename(p, d / "f")
        assert os.pread(fd, 10, 0) == b"\0" * 10
        os.pwrite(fd, b"hi", 0)
        os.fsync(fd)
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"hi" + b"\0" * 8
    assert not p.exists()
    vault.remount()
    assert (d / "f").read_bytes() == b"hi" + b"\0" * 8
    assert not p.exists()


def test_case_11_parent_dir_renamed_while_open(vault: VaultHarness) -> None:
    d = vault.mnt / "dir"
    d.mkdir()
    (d / "f").write_bytes(b"0123456789")
    fd = os.open(d / "f", os.O_RDWR)
    try:
        os.rename(d, vault.mnt / "moved")
        assert os.pread(fd, 10, 0) == b"0123456789"
        os.pwrite(fd, b"AB", 4)
        os.fsync(fd)
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)
    assert (vault.mnt / "moved" / "f").read_bytes() == b"0123AB6789"
    assert not d.exists()
    vault.remount()
    assert (vault.mnt / "moved" / "f").read_bytes() == b"0123AB6789"
    assert sorted(os.listdir(vault.mnt)) == ["moved"]


def test_case_11_renamed_twice_while_open(vault: VaultHarness) -> None:
    (vault.mnt / "a").mkdir()
    (vault.mnt / "b").mkdir()
    first = vault.mnt / "f"
    first.write_bytes(b"x" * (S + 5))
    fd = os.open(first, os.O_RDWR)
    try:
        os.rename(first, vault.mnt / "a" / "g")
        os.rename(vault.mnt / "a" / "g", vault.mnt / "b" / "h")
        assert os.pread(fd, 10, S) == b"xxxxx"
        os.pwrite(fd, b"END", S + 5)
        os.fsync(fd)
        assert os.fstat(fd).st_size == S + 8
    finally:
        os.close(fd)
    final = vault.mnt / "b" / "h"
    assert final.read_bytes() == b"x" * (S + 5) + b"END"
    assert os.listdir(vault.mnt / "a") == []
    assert not first.exists()
    vault.remount()
    assert final.read_bytes() == b"x" * (S + 5) + b"END"
    assert os.listdir(vault.mnt / "a") == []


# CASE-13 (the fault-injection half is in test_resilience.py)


def test_case_13_ls_of_deleted_name(vault: VaultHarness) -> None:
    result = _sh(
        'touch "$MNT/f"; rm "$MNT/f"; ls "$MNT/f"; echo "rc=$?"',
        vault.mnt,
        {"MNT": str(vault.mnt), "LC_ALL": "C"},
    )
    assert result.stdout == "rc=2\n"
    assert "No such file or directory" in result.stderr
    alive = _sh(
        'stat "$MNT" >/dev/null && mountpoint -q "$MNT" && echo alive',
        vault.mnt,
        {"MNT": str(vault.mnt)},
    )
    assert alive.stdout == "alive\n"
    assert _errno_of(os.stat, vault.mnt / "f") == errno.ENOENT
    assert os.listdir(vault.mnt) == []


# CASE-14


def test_case_14_hard_links_share_attributes(vault: VaultHarness) -> None:
    result = _sh(
        "mkdir hl; echo first > hl/a; ln hl/a hl/b; echo more >> hl/a;"
        " stat -c '%i %h %s' hl/a hl/b; cmp hl/a hl/b",
        vault.mnt,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0] == lines[1]
    ino, nlink, size = lines[0].split()
    assert (nlink, size) == ("2", "11")
    assert int(ino) == os.stat(vault.mnt / "hl" / "a").st_ino
    os.unlink(vault.mnt / "hl" / "a")
    assert (vault.mnt / "hl" / "b").read_text() == "first\nmore\n"
    assert os.stat(vault.mnt / "hl" / "b").st_nlink == 1
    vault.remount()
    assert (vault.mnt / "hl" / "b").read_text() == "first\nmore\n"
    assert os.stat(vault.mnt / "hl" / "b").st_nlink == 1
    assert os.listdir(vault.mnt / "hl") == ["b"]


def test_case_14_links_survive_remount(vault: VaultHarness) -> None:
    a, b = vault.mnt / "a", vault.mnt / "b"
    a.write_text("first\n")
    os.link(a, b)
    with open(a, "a") as f:
        f.write("more\n")
    vault.remount()
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_ino == sb.st_ino
    assert (sa.st_nlink, sb.st_nlink) == (2, 2)
    assert (sa.st_size, sb.st_size) == (11, 11)
    assert b.read_text() == "first\nmore\n"


# CASE-15


def test_case_15_long_names(vault: VaultHarness) -> None:
    mnt = vault.mnt
    for n in (1, 100, 143, 200, 255):
        (mnt / ("x" * n)).write_text(str(n))
    mb = "€" * 85
    assert len(mb.encode()) == 255
    (mnt / mb).write_text("mb")
    assert _errno_of(open, mnt / ("y" * 256), "w") == errno.ENAMETOOLONG
    assert _errno_of(os.mkdir, mnt / ("y" * 256)) == errno.ENAMETOOLONG
    assert _errno_of(os.rename, mnt / "x", mnt / ("y" * 256)) == errno.ENAMETOOLONG
    os.rename(mnt / "x", mnt / ("z" * 255))
    assert os.statvfs(mnt).f_namemax == 255

    deep = mnt
    for i in range(15):
        deep = deep / (chr(ord("a") + i) * 200)
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("deep")

    expected = sorted(
        [b"x" * n for n in (100, 143, 200, 255)] + [b"z" * 255, mb.encode(), b"a" * 200]
    )

    def check() -> None:
        assert sorted(os.listdir(os.fsencode(mnt))) == expected
        for n in (100, 143, 200, 255):
            assert (mnt / ("x" * n)).read_text() == str(n)
        assert (mnt / ("z" * 255)).read_text() == "1"
        assert (mnt / mb).read_text() == "mb"
        assert (deep / "bottom").read_text() == "deep"

    check()
    vault.remount()
    check()
    assert os.statvfs(mnt).f_namemax == 255


# CASE-17


def test_case_17_empty_files(vault: VaultHarness, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    result = subprocess.run(
        ["rsync", "-a", str(empty), f"{vault.mnt}/"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    shell = _sh(
        ': > "$MNT/e2"; cp /dev/null "$MNT/e3";'
        " python3 -c \"open('$MNT/e4','w').close()\";"
        ' printf data > "$MNT/e5"; truncate -s 0 "$MNT/e5"',
        vault.mnt,
        {"MNT": str(vault.mnt)},
    )
    assert shell.returncode == 0, shell.stderr
    names = ["e2", "e3", "e4", "e5", "empty"]

    def check() -> None:
        assert sorted(os.listdir(vault.mnt)) == names
        for name in names:
            assert os.stat(vault.mnt / name).st_size == 0
            assert (vault.mnt / name).read_bytes() == b""

    check()
    vault.remount()
    check()


# CASE-19


def test_case_19_fsync_everywhere(vault: VaultHarness) -> None:
    p = vault.mnt / "v.txt"
    p.write_text("a\n")
    result = subprocess.run(
        [
            "vim",
            "-u",
            "NONE",
            "-N",
            "-es",
            "-c",
            "set fsync",
            "-c",
            "normal! Gob",
            "-c",
            "wq",
            str(p),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "E667" not in result.stdout + result.stderr
    assert p.read_text() == "a\nb\n"

    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"c\n")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    r = os.open(p, os.O_RDONLY)
    try:
        os.fsync(r)
        os.fdatasync(r)
    finally:
        os.close(r)
    d = os.open(vault.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(d)
    finally:
        os.close(d)
    assert p.read_text() == "a\nb\nc\n"

    synced = vault.mnt / "synced"
    fd = os.open(synced, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"durable\n")
    os.fsync(fd)
    vault.kill9()
    with pytest.raises(OSError) as err:
        os.close(fd)
    assert err.value.errno == errno.ENOTCONN
    vault.mount()
    assert p.read_text() == "a\nb\nc\n"
    assert synced.read_bytes() == b"durable\n"


# CASE-21


@pytest.fixture
def small_vault(tmp_path: Path) -> Iterator[VaultHarness]:
    """A mounted vault whose data directory is on a 32 MiB tmpfs."""
    harness = VaultHarness(tmp_path)
    subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=32m,mode=0700",
            "tmpfs",
            str(harness.data_home),
        ],
        check=True,
    )
    try:
        harness.init()
        harness.set_token(harness.issue(read=("/**",), write=("/**",)))
        harness.mount()
        yield harness
    finally:
        harness.cleanup()
        # The log lives on the tmpfs; keep it for the failure report.
        (tmp_path / "mount.log").write_text(harness.log_text())
        subprocess.run(["umount", str(harness.data_home)], check=True)


@pytest.mark.log_ok
def test_case_21_disk_full(small_vault: VaultHarness) -> None:
    vault = small_vault
    mnt = vault.mnt
    (mnt / "keep.txt").write_text("precious\n")
    os.sync()

    dd = subprocess.run(
        ["dd", "if=/dev/urandom", f"of={mnt}/fill", "bs=1M", "count=64", "conv=fsync"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dd.returncode != 0
    assert "No space left on device" in dd.stderr
    assert (mnt / "keep.txt").read_text() == "precious\n"

    tmp = mnt / "keep.tmp"
    try:
        tmp.write_text("new\n")
        os.rename(tmp, mnt / "keep.txt")
        saved = True
    except OSError as err:
        assert err.errno == errno.ENOSPC
        saved = False
    assert (mnt / "keep.txt").read_text() == ("new\n" if saved else "precious\n")

    for name in ("fill", "keep.tmp"):
        if (mnt / name).exists():
            os.unlink(mnt / name)
    (mnt / "ok.txt").write_text("after\n")
    assert (mnt / "ok.txt").read_text() == "after\n"
    big = os.urandom(8 * 2**20)
    (mnt / "big").write_bytes(big)
    assert (mnt / "big").read_bytes() == big

    db = sqlite3.connect(f"file:{vault.data_dir / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    vault.remount()
    assert (mnt / "keep.txt").read_text() == ("new\n" if saved else "precious\n")
    assert (mnt / "ok.txt").read_text() == "after\n"
    assert (mnt / "big").read_bytes() == big
    assert not (mnt / "fill").exists()
