"""Clients of pinning targets.

``kubo`` speaks the Kubo RPC API, which Kubo itself and IPFS Cluster's
Kubo-compatible proxy serve; ``wire`` holds how its requests and answers
travel. Only this package imports httpx; every httpx
error is turned into a ``RemoteError`` subclass here.
"""

from jwtfs.remote.kubo import (
    KuboClient,
    NodeResponseError,
    NodeTimeoutError,
    NodeUnreachableError,
)

__all__ = [
    "KuboClient",
    "NodeResponseError",
    "NodeTimeoutError",
    "NodeUnreachableError",
]
