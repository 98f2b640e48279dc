"""The systemd user unit template passes ``systemd-analyze verify`` cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "jwtfs@.service"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
    reason="systemd-analyze is not installed",
)
def test_unit_template_verifies_without_warnings(tmp_path: Path) -> None:
    instance = tmp_path / "jwtfs@home-alice-vault.service"
    shutil.copy(UNIT, instance)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(instance)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_unit_is_notify_type_and_restarts_on_failure() -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    assert "Type=notify" in lines
    assert "Restart=on-failure" in lines
    assert any(
        line.startswith("ExecStart=") and "--foreground" in line for line in lines
    )
