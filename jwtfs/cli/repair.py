"""``jwtfs fsck``: check an unmounted vault and repair what is safe to repair."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from jwtfs.cli.codes import EXIT_FAILURE, EXIT_OK
from jwtfs.config import Config, load_config, with_environment
from jwtfs.daemon import running_mountpoints, vault_lock
from jwtfs.errors import ConfigError
from jwtfs.vault.fsck import FsckReport, check_vault


def fsck(args: argparse.Namespace) -> int:
    """Exit 0 when the vault is clean or all was repaired, 1 when not."""
    config = with_environment(load_config())
    if not config.index_file.exists():
        raise ConfigError(f"{config.index_file}: no index; run 'jwtfs init'")
    show = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\rchecked {done}/{total} versions", end="", file=sys.stderr)

    with contextlib.ExitStack() as stack:
        _lock_unmounted(config, stack)
        report = check_vault(config, repair=args.repair, progress=progress)
    if show and report.versions_checked:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    return EXIT_FAILURE if report.unrepaired else EXIT_OK


def _lock_unmounted(config: Config, stack: contextlib.ExitStack) -> None:
    """Hold the vault lock, or explain in one line that a daemon holds it."""
    try:
        stack.enter_context(vault_lock(config))
    except ConfigError:
        where = [str(m) for m in running_mountpoints(config)]
        fix = f"run 'jwtfs umount {where[0]}'" if where else "unmount it"
        raise ConfigError(
            f"{config.data_dir}: the vault is mounted; {fix} before fsck"
        ) from None


def _print_report(report: FsckReport) -> None:
    for finding in report.findings:
        verdict = "repaired" if finding.repaired else "FOUND"
        print(f"{verdict:<9} {finding.kind:<20} {finding.subject}: {finding.detail}")
    summary = f"{report.versions_checked} versions, {report.streams} streams checked"
    print(f"node      {report.node}")
    if report.clean:
        print(f"fsck: clean ({summary})")
        return
    left = len(report.unrepaired)
    repaired = len(report.findings) - left
    print(
        f"fsck: {len(report.findings)} problems, {repaired} repaired, {left} left "
        f"({summary})"
    )
