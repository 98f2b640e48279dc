"""Serve a vault in the foreground with one injected fault in ``getattr``.

Used by ``tests/mount/test_resilience.py``. This is the one named exception to
"real things, not mocks" that the test standards allow for fault injection:
everything is the real daemon (``load_config``, ``check_mount_request``,
``serve``), except that ``jwtfs.daemon.Operations`` is replaced by a subclass
whose ``getattr`` raises ``RuntimeError`` exactly once, for the first inode
named ``--fault-name``. Two places for the fault:

* ``inner``: inside the real, guarded ``getattr`` (its visibility check), as a
  bug in jwtfs code below a handler would raise;
* ``handler``: the ``getattr`` handler itself, outside any guard jwtfs puts
  on its own methods, as a handler that forgot its guard would raise.

Usage: python -m tests.mount.fault_runner MOUNTPOINT --token-file FILE
    --ready-fd FD --fault-name NAME --mode inner|handler
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pyfuse3

from jwtfs import daemon
from jwtfs.config import load_config
from jwtfs.fs.operations import Operations
from jwtfs.vault.schema import InodeRow

FAULT_MESSAGE = "injected fault in getattr"


class FaultyOperations(Operations):
    """The real handlers, with one ``RuntimeError`` in ``getattr``."""

    fault_name = b""
    fault_mode = "inner"
    armed = True

    def _fault_due(self, inode: int) -> bool:
        if not type(self).armed:
            return False
        names = [path.rsplit(b"/", 1)[-1] for path in self.vault.paths_of(inode)]
        if self.fault_name not in names:
            return False
        type(self).armed = False
        return True

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if self.fault_mode == "handler" and self._fault_due(inode):
            raise RuntimeError(FAULT_MESSAGE)
        result: pyfuse3.EntryAttributes = await super().getattr(inode, ctx)
        return result

    def _require_visible(self, row: InodeRow) -> None:
        if self.fault_mode == "inner" and self._fault_due(row.id):
            raise RuntimeError(FAULT_MESSAGE)
        super()._require_visible(row)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fault_runner")
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--fault-name", required=True)
    parser.add_argument("--mode", choices=("inner", "handler"), required=True)
    args = parser.parse_args(argv)

    daemon.setup_logging()
    config = load_config()
    request, _ = daemon.check_mount_request(
        config, args.mountpoint, args.token_file, None
    )
    FaultyOperations.fault_name = args.fault_name.encode()
    FaultyOperations.fault_mode = args.mode
    daemon.Operations = FaultyOperations  # type: ignore[attr-defined]
    return daemon.serve(request, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
