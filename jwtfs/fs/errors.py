"""The one place where jwtfs errors become the errno a FUSE request fails with.

| error                         | errno   | why                                       |
|-------------------------------|---------|-------------------------------------------|
| ``FilesystemError``           | its own | a POSIX rule names the errno              |
| ``AuthError`` (any)           | EACCES  | refusals look alike, exists or not        |
| ``NotFoundError``             | ENOENT  | the inode went away under the request     |
| ``StoreFullError``            | ENOSPC  | the writer must learn the disk is full    |
| ``IntegrityError``            | EIO     | damaged content is never served           |
| ``StoreError``                | EIO     | storage failed; logged here               |
| ``RemoteError``               | EIO     | a fetch failed; logged where it failed    |
| anything else                 | EIO     | a bug: logged with its traceback, and the |
|                               |         | mount stays up                            |
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pyfuse3

from jwtfs.errors import (
    AuthError,
    FilesystemError,
    IntegrityError,
    NotFoundError,
    RemoteError,
    StoreError,
    StoreFullError,
)

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def errno_of(err: BaseException) -> int:
    """The errno that stands for ``err`` at the kernel boundary."""
    if isinstance(err, FilesystemError):
        return err.errno
    if isinstance(err, AuthError):
        return errno.EACCES
    if isinstance(err, NotFoundError):
        return errno.ENOENT
    if isinstance(err, StoreFullError):
        return errno.ENOSPC
    return errno.EIO


def guarded(handler: F) -> F:
    """Turn every exception of a request handler into a ``FUSEError``.

    pyfuse3 ends its main loop on any exception but ``FUSEError``, which would
    take the mount down; so nothing else may leave a handler.
    """

    @functools.wraps(handler)
    async def wrapper(*args: Any) -> Any:
        try:
            return await handler(*args)
        except pyfuse3.FUSEError:
            raise
        except (FilesystemError, AuthError, NotFoundError) as err:
            raise pyfuse3.FUSEError(errno_of(err)) from None
        except StoreFullError as err:
            log.warning("%s: %s", handler.__name__, err)
            raise pyfuse3.FUSEError(errno.ENOSPC) from None
        except IntegrityError as err:
            log.debug("%s: %s", handler.__name__, err)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except RemoteError as err:
            # Logged once, naming the CID, where the fetch failed.
            log.debug("%s: %s", handler.__name__, err)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except StoreError as err:
            log.error("%s failed: %s", handler.__name__, err)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise pyfuse3.FUSEError(errno.ENOSPC) from None
            log.exception("%s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception(
                "unexpected error in %s; the request fails with EIO", handler.__name__
            )
            raise pyfuse3.FUSEError(errno.EIO) from None

    wrapper.__guarded__ = True  # type: ignore[attr-defined]
    return cast(F, wrapper)
