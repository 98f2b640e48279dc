"""The FUSE session: mounting, the request loop, unmounting.

Kept apart from the handlers so the daemon can drive a mount without knowing
pyfuse3.
"""

from __future__ import annotations

from pathlib import Path

import pyfuse3

from jwtfs.fs.operations import Operations

# default_permissions: the kernel checks modes and owners against the caller,
# so jwtfs only adds the token gate on top. allow_other stays off: only the
# mounting user reaches the mount at all.
MOUNT_OPTIONS = frozenset({"default_permissions", "fsname=jwtfs", "subtype=jwtfs"})


def mount(
    operations: Operations, mountpoint: Path, *, allow_other: bool = False
) -> None:
    """Mount ``operations`` at ``mountpoint``; requests wait for ``serve``.

    ``allow_other`` lets the kernel pass other users' requests on (a non-root
    user needs ``user_allow_other`` in ``/etc/fuse.conf``); the operations
    then refuse them.
    """
    options = set(MOUNT_OPTIONS)
    if allow_other:
        options.add("allow_other")
    pyfuse3.init(operations, str(mountpoint), options)


async def serve() -> None:
    """Answer requests until the filesystem is unmounted or ``stop`` is called."""
    await pyfuse3.main()


def stop() -> None:
    """Make ``serve`` return (from a signal handler or another task)."""
    pyfuse3.terminate()


def close(*, unmount: bool) -> None:
    """End the session, unmounting unless the kernel already did."""
    pyfuse3.close(unmount=unmount)
