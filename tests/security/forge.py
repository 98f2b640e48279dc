"""How the security tests forge tokens: any header, payload and key, unchecked.

``sign_bytes`` signs raw bytes, so a test can build what no JWT library would
emit (duplicate members, nesting thousands deep, invalid UTF-8). ``ATTACKER``
is an Ed25519 key no vault trusts (``tests/security/keys/make-keys``). ``Audit``
records, through Python's audit hooks, whether a call reached outside the
process's memory: a file, a process, a socket, a database.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jwt

from jwtfs.crypto.signing import load_public_key

KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
ATTACKER = Path(__file__).resolve().parent / "keys" / "attacker-ed25519.private.pem"
ATTACKER_PUBLIC = ATTACKER.with_name("attacker-ed25519.public.pem")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private(name: str) -> bytes:
    """The private PEM of fixture key ``name`` (ed25519, p256, rsa2048)."""
    return (KEYS / f"{name}.private.pem").read_bytes()


def sign_bytes(header: bytes, payload: bytes, key_pem: bytes, alg: str) -> str:
    """Sign any header and payload bytes, unchecked, as an issuer's key could."""
    algorithm = jwt.get_algorithm_by_name(alg)
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = algorithm.sign(signing_input.encode(), algorithm.prepare_key(key_pem))
    return f"{signing_input}.{b64(signature)}"


def sign(
    body: dict[str, Any], key_pem: bytes, alg: str = "EdDSA", **header: Any
) -> str:
    """Sign the claims ``body`` with ``alg``; ``header`` adds header members."""
    head = json.dumps({"alg": alg, "typ": "JWT", **header}).encode()
    return sign_bytes(head, json.dumps(body).encode(), key_pem, alg)


def jwk_of(public_pem: bytes, alg: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of a PEM key, with ``extra`` members such as ``kid``."""
    key = load_public_key(public_pem)
    jwk: dict[str, Any] = jwt.get_algorithm_by_name(alg).to_jwk(key, as_dict=True)
    jwk.pop("key_ops", None)
    jwk.update(extra)
    return jwk


# Audit events that would mean a call reached outside memory.
_OUTSIDE = (
    "open",
    "os.",
    "subprocess.",
    "socket.",
    "sqlite3.",
    "urllib.",
    "shutil.",
    "ctypes.",
    "glob.",
    "http.",
)


class Audit:
    """Records the outside-reaching audit events of one call.

    A hook cannot be removed once added, so one is added for the session, the
    first time it is needed, and records nothing outside ``watching``.
    """

    installed: ClassVar[bool] = False
    active: ClassVar[bool] = False
    events: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.active and event.startswith(_OUTSIDE):
            cls.events.append((event, repr(args)[:200]))

    @classmethod
    def watching(
        cls, call: Callable[[], object], *, expected: type[Exception] | None = None
    ) -> list[tuple[str, str]]:
        """Run ``call`` (an ``expected`` exception is swallowed); return the events."""
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True
        cls.events = []
        cls.active = True
        try:
            call()
        except Exception as err:
            if expected is None or not isinstance(err, expected):
                raise
        finally:
            cls.active = False
        return list(cls.events)
