"""The JWT cases of shared/cases/CASES.md, validator side (CASE-25, 26, 29, 30).

Each input is built with the stdlib ``make`` helper of CASES.md and checked
twice: by ``Verifier.verify`` with a real ``AuthConfig`` and real key files,
and through a ``TokenSource`` reading it from a token file, whose grants must
then not reach the in-scope path ``/doc``. Reading through a mount is the fs
layer's part of these cases.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from jwtfs.auth.sources import TokenSource
from jwtfs.auth.tokens import Verifier
from jwtfs.config import AuthConfig
from jwtfs.errors import (
    AuthError,
    TokenClaimError,
    TokenExpiredError,
    TokenMalformedError,
    TokenNotYetValidError,
    TokenSignatureError,
)

KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
AUD = "jwtfs:cases"
IN_SCOPE = b"/doc"


def b64(b: bytes) -> bytes:
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def make(
    header: dict[str, Any],
    claims: dict[str, Any],
    secret: bytes | None = None,
    sig: bytes | None = None,
) -> str:
    h, p = b64(json.dumps(header).encode()), b64(json.dumps(claims).encode())
    if sig is None:
        sig = (
            b""
            if secret is None
            else b64(hmac.new(secret, h + b"." + p, hashlib.sha256).digest())
        )
    return (h + b"." + p + b"." + sig).decode()


def good(now: float | None = None, **changes: Any) -> dict[str, Any]:
    at = int(time.time() if now is None else now)
    claims = {"aud": AUD, "exp": at + 600, "iat": at, "scope": "read:/**"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def signed(header: dict[str, Any], claims: dict[str, Any], key: str) -> str:
    """``make`` with a real signature by the fixture key ``key``."""
    signing_input = make(header, claims, sig=b"")[:-1].encode()
    algorithm = jwt.get_algorithm_by_name(header["alg"])
    pem = (KEYS / f"{key}.private.pem").read_bytes()
    return make(
        header,
        claims,
        sig=b64(algorithm.sign(signing_input, algorithm.prepare_key(pem))),
    )


def verifier(key_file: str, *, leeway: int = 30, clock: Any = time.time) -> Verifier:
    cfg = AuthConfig(audience=AUD, key_files=(KEYS / key_file,), leeway=leeway)
    return Verifier(cfg, clock=clock)


def refused(v: Verifier, token: str) -> tuple[type[AuthError], str]:
    with pytest.raises(AuthError) as caught:
        v.verify(token)
    return type(caught.value), str(caught.value)


def file_grants_reach(v: Verifier, token: str, tmp_path: Path) -> bool:
    path = tmp_path / "t.jwt"
    path.write_text(token + "\n")
    return TokenSource(v, path, None).grants().can_read(IN_SCOPE)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- CASE-25: HMAC verification keyed with the public key ---

ENCODINGS = ("pem", "openssh", "der")


@pytest.mark.parametrize(("key", "alg"), [("p256", "ES256"), ("rsa2048", "RS256")])
@pytest.mark.parametrize("configured", ENCODINGS)
def test_case25_hs256_keyed_with_the_public_key_is_refused(
    key: str, alg: str, configured: str, tmp_path: Path
) -> None:
    v = verifier(f"{key}.public.{configured}")
    for encoding in ENCODINGS:
        secret = (KEYS / f"{key}.public.{encoding}").read_bytes()
        for secret_bytes in (secret, secret.strip()):
            forged = make({"alg": "HS256", "typ": "JWT"}, good(), secret=secret_bytes)
            assert refused(v, forged) == (
                TokenSignatureError,
                "algorithm 'HS256' is not allowed for the configured keys",
            )
            assert not file_grants_reach(v, forged, tmp_path)

    control = signed({"alg": alg, "typ": "JWT"}, good(), key)
    assert v.verify(control).grants.can_read(IN_SCOPE)
    assert file_grants_reach(v, control, tmp_path)


# --- CASE-26: alg none ---


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_case26_alg_none_is_refused(alg: str, tmp_path: Path) -> None:
    v = verifier("ed25519.public.pem")
    genuine = signed({"alg": "EdDSA", "typ": "JWT"}, good(), "ed25519")
    assert v.verify(genuine).grants.can_read(IN_SCOPE)
    for sig in (b"", genuine.rsplit(".", 1)[1].encode()):
        token = make({"alg": alg, "typ": "JWT"}, good(), sig=sig)
        assert refused(v, token) == (
            TokenSignatureError,
            "unsigned tokens (alg none) are never accepted",
        )
        assert not file_grants_reach(v, token, tmp_path)


def test_case26_header_without_alg_is_refused(tmp_path: Path) -> None:
    v = verifier("ed25519.public.pem")
    genuine = signed({"alg": "EdDSA", "typ": "JWT"}, good(), "ed25519")
    for sig in (b"", genuine.rsplit(".", 1)[1].encode()):
        token = make({"typ": "JWT"}, good(), sig=sig)
        assert refused(v, token) == (
            TokenMalformedError,
            "the header names no algorithm (alg)",
        )
        assert not file_grants_reach(v, token, tmp_path)


def test_case26_empty_alg_is_refused() -> None:
    token = make({"alg": "", "typ": "JWT"}, good(), sig=b"")
    assert refused(verifier("ed25519.public.pem"), token) == (
        TokenSignatureError,
        "algorithm '' is not allowed for the configured keys",
    )


# --- CASE-29: clock skew and leeway ---

L = 60
NOW = 2_000_000_000


def case29(clock: Clock, **changes: Any) -> tuple[Verifier, str]:
    claims = good(NOW, **changes)
    return verifier("ed25519.public.pem", leeway=L, clock=clock), signed(
        {"alg": "EdDSA", "typ": "JWT"}, claims, "ed25519"
    )


def test_case29_slightly_future_iat_and_nbf_are_accepted() -> None:
    v, token = case29(Clock(NOW), iat=NOW + 2, nbf=NOW + 2)
    assert v.verify(token).grants.can_read(IN_SCOPE)


def test_case29_nbf_beyond_the_leeway_is_refused() -> None:
    v, token = case29(Clock(NOW), nbf=NOW + L + 5)
    assert refused(v, token) == (
        TokenNotYetValidError,
        "not valid before 2033-05-18T03:34:25Z",
    )


def test_case29_exp_within_the_leeway_is_accepted() -> None:
    v, token = case29(Clock(NOW), exp=NOW - 5)
    assert v.verify(token).grants.can_read(IN_SCOPE)


def test_case29_exp_beyond_the_leeway_is_refused() -> None:
    v, token = case29(Clock(NOW), exp=NOW - L - 5)
    assert refused(v, token) == (TokenExpiredError, "expired at 2033-05-18T03:32:15Z")


def test_case29_exp_as_a_string_is_refused() -> None:
    v, token = case29(Clock(NOW), exp="9999999999")
    assert refused(v, token) == (TokenClaimError, "the exp claim is not a number")


def test_case29_expiry_stops_access_without_a_remount(tmp_path: Path) -> None:
    clock = Clock(NOW)
    v, token = case29(clock, exp=NOW + 10)
    path = tmp_path / "t.jwt"
    path.write_text(token + "\n")
    source = TokenSource(v, path, None)
    assert source.grants().can_read(IN_SCOPE)

    clock.now = NOW + 10 + L
    assert not source.grants().can_read(IN_SCOPE)

    fresh = signed({"alg": "EdDSA", "typ": "JWT"}, good(clock.now), "ed25519")
    staged = tmp_path / "t.new"
    staged.write_text(fresh + "\n")
    staged.replace(path)
    assert source.refresh() is True
    assert source.grants().can_read(IN_SCOPE)


# --- CASE-30: expired tokens accepted ---


@pytest.mark.parametrize(
    ("changes", "error", "reason"),
    [
        ({"exp": -3600}, TokenExpiredError, "expired at "),
        ({"exp": None}, TokenClaimError, "the exp claim is missing"),
        ({"nbf": 3600}, TokenNotYetValidError, "not valid before "),
    ],
)
def test_case30_expired_missing_exp_and_future_nbf_are_refused(
    changes: dict[str, int | None],
    error: type[AuthError],
    reason: str,
    tmp_path: Path,
) -> None:
    now = int(time.time())
    shifted = {k: None if v is None else now + v for k, v in changes.items()}
    token = signed({"alg": "EdDSA", "typ": "JWT"}, good(now, **shifted), "ed25519")
    v = verifier("ed25519.public.pem")
    kind, message = refused(v, token)
    assert kind is error
    assert message.startswith(reason)
    assert not file_grants_reach(v, token, tmp_path)
