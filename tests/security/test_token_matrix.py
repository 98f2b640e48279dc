"""The token attack matrix, validator side: one named test per threat.

Each hostile token is refused unless its test says otherwise, by ``Verifier``
with a real ``AuthConfig`` over the key fixtures. The same threats through a
mount, with key rotation and the token file, are in
``test_token_matrix_mount.py``.

Threats already covered elsewhere are not repeated here (docs/SECURITY.md maps
every threat to its test): ``alg: none`` in any casing, a header without
``alg``, HS256 keyed with a P-256 or RSA public key, expired tokens, ``nbf``
and ``iat`` beyond the leeway, ``exp`` missing or a string, wrong audience
(``test_token_cases.py`` and ``test_token_cases_mount.py``); audiences that
merely contain the right one, audience lists, issuers, bad signatures, unknown
kids, revoked jtis (``tests/unit/test_tokens.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jwtfs.auth.sources import TokenSource
from jwtfs.auth.tokens import Verifier
from jwtfs.config import AuthConfig
from jwtfs.errors import (
    AuthError,
    TokenClaimError,
    TokenExpiredError,
    TokenMalformedError,
    TokenSignatureError,
)
from tests.security.forge import (
    ATTACKER,
    ATTACKER_PUBLIC,
    KEYS,
    Audit,
    b64,
    jwk_of,
    private,
    sign,
    sign_bytes,
)
from tests.security.timing import FAST, fastest

AUD = "jwtfs:matrix"

NOT_ALLOWED = "algorithm {!r} is not allowed for the configured keys"
NO_SUCH_KID = "no configured key has the token's key id (kid)"


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"aud": AUD, "exp": now + 600, "iat": now}
    body.update(sub="matrix", scope="read:/**")
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def verifier(*key_files: Path, jwks: Path | None = None) -> Verifier:
    return Verifier(AuthConfig(audience=AUD, key_files=key_files, jwks_file=jwks))


def touches(v: Verifier, token: str) -> list[tuple[str, str]]:
    """What verifying ``token`` did outside memory (see ``forge.Audit``)."""
    return Audit.watching(lambda: v.verify(token), expected=AuthError)


def refusal(v: Verifier, token: str) -> tuple[type[AuthError], str]:
    with pytest.raises(AuthError) as caught:
        v.verify(token)
    return type(caught.value), str(caught.value)


# --- HS256 keyed with the configured public key (Ed25519; CASE-25 has the rest) ---


ENCODINGS = ("pem", "der", "openssh")


def _ed25519_secrets() -> list[bytes]:
    found = [(KEYS / f"ed25519.public.{e}").read_bytes() for e in ENCODINGS]
    found += [s.strip() for s in found]
    openssh = (KEYS / "ed25519.public.openssh").read_text().split()
    found.append(" ".join(openssh[:2]).encode())
    found.append(base64.b64decode(openssh[1])[-32:])
    return found


def hs256(body: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand: jwt.encode itself refuses a public key as a secret."""
    signing_input = f"{_head_for('HS256')}.{b64(json.dumps(body).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _head_for(alg: str) -> str:
    return b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())


@pytest.mark.parametrize("configured", ENCODINGS)
def test_hs256_keyed_with_the_ed25519_public_key_is_refused(configured: str) -> None:
    v = verifier(KEYS / f"ed25519.public.{configured}")
    for secret in _ed25519_secrets():
        forged = hs256(claims(), secret)
        assert refusal(v, forged) == (TokenSignatureError, NOT_ALLOWED.format("HS256"))
    assert v.verify(sign(claims(), private("ed25519"))).sub == "matrix"


# --- algorithms swapped against the key type ---

SIGNERS = {
    "EdDSA": "ed25519",
    "ES256": "p256",
    "RS256": "rsa2048",
    "PS256": "rsa2048",
    "RS512": "rsa2048",
    "PS512": "rsa2048",
}
ALLOWED = {"ed25519": {"EdDSA"}, "p256": {"ES256"}, "rsa2048": {"RS256", "PS256"}}


@pytest.mark.parametrize("configured", sorted(ALLOWED))
@pytest.mark.parametrize("alg", sorted(SIGNERS))
def test_an_algorithm_swapped_against_the_key_type_is_refused(
    configured: str, alg: str
) -> None:
    """Each alg, signed properly by a key of its own type, against each key.

    Only the key's own algorithms verify; RS512 and PS512 by the very RSA key
    that is configured are refused too, since the algorithms follow from the
    key type and not from the token.
    """
    v = verifier(KEYS / f"{configured}.public.pem")
    token = sign(claims(), private(SIGNERS[alg]), alg)
    if alg in ALLOWED[configured]:
        assert v.verify(token).sub == "matrix"
        return
    assert refusal(v, token) == (TokenSignatureError, NOT_ALLOWED.format(alg))


@pytest.mark.parametrize(
    ("configured", "claimed"),
    [("ed25519", "ES256"), ("p256", "EdDSA"), ("rsa2048", "EdDSA")],
)
def test_a_header_naming_another_algorithm_than_the_signature_is_refused(
    configured: str, claimed: str
) -> None:
    """The configured key really signed; the header only lies about how."""
    own = next(iter(sorted(ALLOWED[configured])))
    genuine = sign(claims(), private(configured), own)
    body, signature = genuine.split(".")[1:]
    header = b64(json.dumps({"alg": claimed, "typ": "JWT"}).encode())
    v = verifier(KEYS / f"{configured}.public.pem")
    assert refusal(v, f"{header}.{body}.{signature}") == (
        TokenSignatureError,
        NOT_ALLOWED.format(claimed),
    )
    assert v.verify(genuine).sub == "matrix"


# --- kid is a lookup key and nothing else ---


@pytest.fixture
def kid_setup(tmp_path: Path) -> tuple[Path, Path]:
    """A JWKS with kid k1 (the fixture key) in conf/, the attacker's key beside it."""
    conf = tmp_path / "conf"
    conf.mkdir()
    jwks = conf / "keys.json"
    pub = (KEYS / "ed25519.public.pem").read_bytes()
    jwks.write_text(json.dumps({"keys": [jwk_of(pub, "EdDSA", kid="k1")]}))
    evil = tmp_path / "evil.pem"
    evil.write_bytes(ATTACKER_PUBLIC.read_bytes())
    return jwks, evil


def _hostile_kids(evil: Path, marker: Path) -> list[str]:
    return [
        "../../etc/passwd",
        "/etc/passwd",
        str(evil),
        "../evil.pem",
        f"file://{evil}",
        f"{evil}\x00k1",
        "' OR '1'='1",
        "k1' --",
        "1; DROP TABLE keys; --",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"k1; touch {marker}",
        f"k1 | touch {marker}",
        "%2e%2e%2fetc%2fpasswd",
        "k" * 4000,
    ]


def test_a_hostile_kid_signed_by_the_attacker_is_refused_touching_nothing(
    kid_setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kid naming a file that holds the attacker's public key selects nothing.

    Were a kid used as a path (relative to the JWKS file or the working
    directory), ``evil.pem`` would verify the attacker's token. The audit hook
    sees no file opened, no process started, no socket, while verifying.
    """
    jwks, evil = kid_setup
    monkeypatch.chdir(jwks.parent)
    marker = tmp_path / "pwned"
    [(event, _)] = Audit.watching(evil.read_bytes)
    assert event == "open"  # the hook does see a file being opened

    with_kids = verifier(jwks=jwks)
    without_kids = verifier(KEYS / "ed25519.public.pem")
    for kid in _hostile_kids(evil, marker):
        token = sign(claims(), ATTACKER.read_bytes(), kid=kid)
        assert refusal(with_kids, token) == (TokenSignatureError, NO_SUCH_KID), kid
        assert refusal(without_kids, token) == (TokenSignatureError, "bad signature")
        for v in (with_kids, without_kids):
            assert touches(v, token) == [], kid
    assert not marker.exists()


@pytest.mark.parametrize("kid", ["K1", "k1 ", " k1", "k1\x00", "k\u0131", "k1\n"])
def test_a_kid_that_only_resembles_a_configured_one_selects_no_key(
    kid_setup: tuple[Path, Path], kid: str
) -> None:
    jwks, _ = kid_setup
    v = verifier(jwks=jwks)
    assert v.verify(sign(claims(), private("ed25519"), kid="k1")).sub == "matrix"
    token = sign(claims(), private("ed25519"), kid=kid)
    assert refusal(v, token) == (TokenSignatureError, NO_SUCH_KID)


# --- jku, x5u, x5c and an embedded jwk are ignored ---


def test_the_attackers_embedded_jwk_and_key_urls_are_ignored(
    kid_setup: tuple[Path, Path],
) -> None:
    """A token signed by the attacker's own Ed25519 key, carrying that key.

    Same algorithm as the vault's key, so only the signature tells them apart.
    The URLs point at the discard port on loopback; the audit hook shows no
    socket is ever opened.
    """
    jwks, _ = kid_setup
    jwk = jwk_of(ATTACKER_PUBLIC.read_bytes(), "EdDSA")
    hostile: dict[str, Any] = {
        "jwk": jwk,
        "jku": "http://127.0.0.1:9/jwks.json",
        "x5u": "http://127.0.0.1:9/cert.pem",
        "x5c": [base64.b64encode(b"not a certificate").decode()],
    }
    for v, kid in (
        (verifier(KEYS / "ed25519.public.pem"), None),
        (verifier(jwks=jwks), "k1"),
    ):
        extra = hostile if kid is None else {**hostile, "kid": kid}
        forged = sign(claims(), ATTACKER.read_bytes(), **extra)
        assert refusal(v, forged) == (TokenSignatureError, "bad signature")
        assert touches(v, forged) == []
        genuine = sign(claims(), private("ed25519"), **extra)
        assert v.verify(genuine).sub == "matrix"


# --- malformed tokens: refused quickly, with a reason ---

NOT_COMPACT = "not a compact JWS (three base64url parts separated by '.')"
BAD_HEADER = "the header is not a JSON object"
TOO_LONG = "longer than 16 KiB"
BAD_PAYLOAD = "unreadable payload or signature (Invalid payload string"
MiB = 1024 * 1024


def _head() -> str:
    return b64(b'{"alg":"EdDSA","typ":"JWT"}')


def _body() -> str:
    return b64(json.dumps(claims()).encode())


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_header(depth: int) -> str:
    """An unsigned token whose header nests ``depth`` arrays deep."""
    header = b'{"alg":"EdDSA","x":' + _nested(depth) + b"}"
    return f"{b64(header)}.{_body()}.AA"


def _signed_payload(payload: bytes) -> str:
    return sign_bytes(b'{"alg":"EdDSA"}', payload, private("ed25519"), "EdDSA")


MALFORMED: dict[str, tuple[Callable[[], str], type[AuthError], str]] = {
    "garbage": (lambda: "\x00\x01 garbage \u2603", TokenMalformedError, NOT_COMPACT),
    "empty": (lambda: "", TokenMalformedError, NOT_COMPACT),
    "two-segments": (lambda: f"{_head()}.{_body()}", TokenMalformedError, NOT_COMPACT),
    "four-segments": (
        lambda: f"{_head()}.{_body()}.AAAA.AAAA",
        TokenMalformedError,
        NOT_COMPACT,
    ),
    "standard-base64-alphabet": (
        lambda: f"{_head()}.{_body()}.ab+c/d==",
        TokenMalformedError,
        NOT_COMPACT,
    ),
    "impossible-base64-length": (
        lambda: f"AAAAA.{_body()}.AAAA",
        TokenMalformedError,
        BAD_HEADER,
    ),
    "non-utf8-header": (
        lambda: f"{b64(bytes([0xFF, 0xFE, 0x7B]))}.{_body()}.AAAA",
        TokenMalformedError,
        BAD_HEADER,
    ),
    "non-utf8-payload": (
        lambda: _signed_payload(b'{"aud": "\xff\xfe"}'),
        TokenMalformedError,
        BAD_PAYLOAD,
    ),
    "lone-surrogate": (
        lambda: f"{_head()}.{_body()}.AA\udcff",
        TokenMalformedError,
        NOT_COMPACT,
    ),
    "one-mebibyte": (
        lambda: f"{_head()}.{'A' * MiB}.AAAA",
        TokenMalformedError,
        TOO_LONG,
    ),
    "one-mebibyte-of-dots": (lambda: "." * MiB, TokenMalformedError, TOO_LONG),
    "header-nested-1e5": (
        lambda: _nested_header(10**5),
        TokenMalformedError,
        TOO_LONG,
    ),
    "payload-nested-1e5": (
        lambda: _signed_payload(b'{"x":' + _nested(10**5) + b"}"),
        TokenMalformedError,
        TOO_LONG,
    ),
    # The deepest nesting that still fits in 16 KiB: past the JSON parser's
    # recursion limit, which must come back as a refusal, not a RecursionError.
    "header-nested-5000": (
        lambda: _nested_header(5000),
        TokenMalformedError,
        BAD_HEADER,
    ),
    "payload-nested-5000": (
        lambda: _signed_payload(b'{"x":' + _nested(5000) + b"}"),
        TokenMalformedError,
        BAD_PAYLOAD,
    ),
}


@pytest.fixture(scope="module")
def warm() -> Verifier:
    """A verifier that has verified once, so timings leave out first-use costs."""
    v = verifier(KEYS / "ed25519.public.pem")
    assert v.verify(sign(claims(), private("ed25519"))).sub == "matrix"
    return v


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_token_is_refused_quickly_with_a_reason(
    case: str, warm: Verifier
) -> None:
    build, kind, reason = MALFORMED[case]
    token = build()
    with pytest.raises(AuthError) as caught:
        warm.verify(token)
    assert type(caught.value) is kind
    assert str(caught.value).startswith(reason)
    elapsed = fastest(lambda: warm.check(token))
    assert elapsed < FAST, f"{case} took {elapsed * 1000:.1f} ms"


@pytest.mark.parametrize("depth", [5000, 10**5])
@pytest.mark.parametrize("where", ["header", "payload", "scope"])
def test_deeply_nested_json_in_a_token_file_grants_nothing_and_raises_nothing(
    where: str, depth: int, warm: Verifier, tmp_path: Path
) -> None:
    """Read through a ``TokenSource``, which the daemon polls: no exception at all.

    An exception out of ``refresh`` would leave the daemon on its previous
    grants (its watcher keeps them when re-reading fails).
    """
    nested = _nested(depth)
    if where == "header":
        token = _nested_header(depth)
    elif where == "payload":
        token = _signed_payload(b'{"x":' + nested + b"}")
    else:
        body = json.dumps(claims(scope=None)).encode()[:-1] + b',"scope":' + nested
        token = _signed_payload(body + b"}")
    path = tmp_path / "t.jwt"
    good = sign(claims(scope="read:/ok"), private("ed25519"))
    path.write_text(f"{token}\n{good}\n")
    source = TokenSource(warm, path, None)
    assert source.refresh() is False
    assert source.grants().can_read(b"/ok")
    assert not source.grants().can_read(b"/other")
    assert source.fingerprints == (warm.verify(good).fingerprint,)


# --- duplicate names in the JSON ---


def _payload_with(*members: tuple[str, Any]) -> bytes:
    return (
        "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}"
    ).encode()


def test_duplicate_claim_names_take_the_lexically_last_value(warm: Verifier) -> None:
    """RFC 7519 section 4 allows a parser that keeps the last duplicate member.

    jwtfs does (Python's json), the same way for its own header checks and
    for jwt's decoding, so no part of the verifier sees another value than
    the rest. An issuer serialising a dict never emits a duplicate.
    """
    now = int(time.time())
    base = (("aud", AUD), ("sub", "dup"), ("scope", "read:/**"))
    later_valid = _payload_with(*base, ("exp", now - 3600), ("exp", now + 600))
    assert warm.verify(_signed_payload(later_valid)).exp == now + 600

    later_expired = _payload_with(*base, ("exp", now + 600), ("exp", now - 3600))
    kind, reason = refusal(warm, _signed_payload(later_expired))
    assert kind is TokenExpiredError
    assert reason.startswith("expired at ")

    scopes = _payload_with(
        ("aud", AUD), ("exp", now + 60), ("scope", "read:/**"), ("scope", "read:/a")
    )
    grants = warm.verify(_signed_payload(scopes)).grants
    assert (grants.can_read(b"/a"), grants.can_read(b"/b")) == (True, False)

    auds = _payload_with(("aud", AUD), ("aud", "other"), ("exp", now + 60))
    assert refusal(warm, _signed_payload(auds)) == (
        TokenClaimError,
        f"wrong audience (this vault accepts {AUD!r})",
    )


def test_a_duplicate_alg_in_the_header_is_read_as_its_last_value(
    warm: Verifier,
) -> None:
    payload = json.dumps(claims()).encode()
    last_none = sign_bytes(
        b'{"alg":"EdDSA","alg":"none"}', payload, private("ed25519"), "EdDSA"
    )
    assert refusal(warm, last_none) == (
        TokenSignatureError,
        "unsigned tokens (alg none) are never accepted",
    )
    last_eddsa = sign_bytes(
        b'{"alg":"none","alg":"EdDSA"}', payload, private("ed25519"), "EdDSA"
    )
    assert warm.verify(last_eddsa).sub == "matrix"
