"""Index snapshots: vault A's tree comes back byte for byte on a new data directory."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tests.harness import VaultHarness


def _snapshot_cid(h: VaultHarness, timeout: float = 30.0) -> str:
    """The snapshot CID once nothing is queued; interval is 1 s in these tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = json.loads(h.jwtfs("status", "--json").stdout)
        if report["snapshot"] is not None and report["backlog"]["versions"] == 0:
            return str(report["snapshot"]["cid"])
        time.sleep(0.5)
    raise AssertionError("no snapshot pinned")


def test_recover_rebuilds_the_tree_from_one_cid(tmp_path: Path, ipfs_api: str) -> None:
    a = VaultHarness(tmp_path / "a")
    a.init(ipfs_api=ipfs_api)
    a.set_config("backup", "interval", 1)
    a.set_token(a.issue(read=("/**",), write=("/**",)))
    a.mount()
    try:
        files = {
            "docs/a.txt": b"alpha\n",
            "docs/deep/b.bin": os.urandom(700_000),
            "empty": b"",
            "c.bin": os.urandom(65_537),
        }
        for name, data in files.items():
            path = a.mnt / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        os.symlink("docs/a.txt", a.mnt / "link")
        a.jwtfs("flush", "--wait", "--timeout", "60")
        # Pin states changed last; a snapshot follows within the interval.
        time.sleep(3)
        cid = _snapshot_cid(a)
    finally:
        a.umount()

    b = VaultHarness(tmp_path / "b")
    shutil.copytree(a.config_dir, b.config_dir)
    config = b.config_dir / "config.toml"
    config.write_text(config.read_text().replace(str(a.data_dir), str(b.data_dir)))
    result = b.jwtfs("recover", cid)
    assert "recovered the index: 4 files" in result.stdout
    b.token_file.write_text(a.token_file.read_text())
    b.token_file.chmod(0o600)
    b.mount()
    try:
        for name, data in files.items():
            assert (b.mnt / name).read_bytes() == data, name
        assert os.readlink(b.mnt / "link") == "docs/a.txt"
        assert sorted(os.listdir(b.mnt)) == ["c.bin", "docs", "empty", "link"]
    finally:
        b.umount()


def test_recover_refuses_an_existing_index(fresh_vault: VaultHarness) -> None:
    result = fresh_vault.jwtfs(
        "recover",
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        "--ipfs-api",
        "http://127.0.0.1:9",
        check=False,
    )
    assert result.returncode == 1
    assert "an index exists already" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
