"""Shared fixtures: throwaway vaults with real FUSE mounts."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import VaultHarness

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") and not os.environ.get("CI"),
    reason="no /dev/fuse on this machine",
)

_BAD_LOG = re.compile(r" (WARNING|ERROR|CRITICAL) ")


@pytest.fixture
def fresh_vault(tmp_path: Path) -> Iterator[VaultHarness]:
    """An initialised vault, not mounted."""
    harness = VaultHarness(tmp_path)
    harness.init()
    yield harness
    harness.cleanup()


@pytest.fixture
def vault(
    fresh_vault: VaultHarness, request: pytest.FixtureRequest
) -> Iterator[VaultHarness]:
    """A vault mounted with a token that reads and writes everything.

    The test fails if the daemon logged a WARNING or ERROR it did not expect;
    a test that provokes one marks itself with ``@pytest.mark.log_ok``.
    """
    fresh_vault.set_token(fresh_vault.issue(read=("/**",), write=("/**",)))
    fresh_vault.mount()
    yield fresh_vault
    fresh_vault.cleanup()
    if request.node.get_closest_marker("log_ok") is None:
        bad = [
            line
            for line in fresh_vault.log_text().splitlines()
            if _BAD_LOG.search(line)
        ]
        assert not bad, "unexpected daemon log lines:\n" + "\n".join(bad)
