"""Keys, verification, issuing and inspection of tokens (jwtfs.auth.tokens)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jwtfs.auth.issuing import (
    encode_pattern,
    inspect_token,
    issue_token,
    parse_duration,
)
from jwtfs.auth.keyset import KeySet
from jwtfs.auth.scope import Action, Grant, Grants
from jwtfs.auth.tokens import MAX_TOKEN_BYTES, Verifier, format_time
from jwtfs.config import AuthConfig
from jwtfs.crypto.signing import load_public_key
from jwtfs.errors import (
    AuthError,
    ConfigError,
    TokenClaimError,
    TokenExpiredError,
    TokenMalformedError,
    TokenNotYetValidError,
    TokenRevokedError,
    TokenSignatureError,
)

KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
AUD = "jwtfs:test"
ED_PUB = KEYS / "ed25519.public.pem"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private(name: str) -> bytes:
    return (KEYS / f"{name}.private.pem").read_bytes()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "aud": AUD,
        "exp": now + 600,
        "iat": now,
        "sub": "alice",
        "scope": "read:/**",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    body: dict[str, Any],
    *,
    key: str = "ed25519",
    alg: str = "EdDSA",
    headers: dict[str, Any] | None = None,
) -> str:
    return jwt.encode(body, private(key), algorithm=alg, headers=headers)


def sign_raw(header: dict[str, Any], body: str, key: str = "ed25519") -> str:
    """Sign any header and payload text, unchecked, as an issuer could."""
    algorithm = jwt.get_algorithm_by_name(header["alg"])
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body.encode())}"
    signature = algorithm.sign(
        signing_input.encode(), algorithm.prepare_key(private(key))
    )
    return f"{signing_input}.{b64(signature)}"


def verifier(**changes: Any) -> Verifier:
    settings: dict[str, Any] = {"audience": AUD, "key_files": (ED_PUB,)}
    settings.update(changes)
    return Verifier(AuthConfig(**settings))


def refusal(v: Verifier, token: str) -> tuple[type[AuthError], str]:
    with pytest.raises(AuthError) as caught:
        v.verify(token)
    return type(caught.value), str(caught.value)


def ed25519_thumbprint() -> str:
    """RFC 7638 thumbprint of the fixture key, from the raw bytes of its SSH line."""
    blob = base64.b64decode((KEYS / "ed25519.public.openssh").read_text().split()[1])
    x = b64(blob[-32:])
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()
    return b64(hashlib.sha256(canonical).digest())


def jwk_of(name: str, algorithm: str, /, **extra: Any) -> dict[str, Any]:
    key = load_public_key((KEYS / f"{name}.public.pem").read_bytes())
    jwk: dict[str, Any] = jwt.get_algorithm_by_name(algorithm).to_jwk(key, as_dict=True)
    jwk.pop("key_ops", None)
    jwk.update(extra)
    return jwk


def write_jwks(tmp_path: Path, *keys: dict[str, Any]) -> Path:
    path = tmp_path / "keys.jwks"
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


# --- KeySet ---


@pytest.mark.parametrize("encoding", ["pem", "der", "openssh"])
def test_key_files_load_in_every_encoding_with_one_fingerprint(encoding: str) -> None:
    cfg = AuthConfig(audience=AUD, key_files=(KEYS / f"ed25519.public.{encoding}",))
    (key,) = KeySet.from_config(cfg).keys
    assert key.algorithms == ("EdDSA",)
    assert key.kid is None
    assert key.fingerprint == ed25519_thumbprint()


@pytest.mark.parametrize(
    ("name", "algorithms"),
    [("p256", ("ES256",)), ("rsa2048", ("RS256", "PS256"))],
)
def test_algorithms_follow_from_the_key_type(
    name: str, algorithms: tuple[str, ...]
) -> None:
    for encoding in ("pem", "der", "openssh"):
        cfg = AuthConfig(audience=AUD, key_files=(KEYS / f"{name}.public.{encoding}",))
        assert KeySet.from_config(cfg).keys[0].algorithms == algorithms


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("p384.public.pem", "EC keys on curve secp384r1 are not supported; use P-256"),
        ("rsa1024.public.pem", "an RSA key of 1024 bits is too short"),
        ("x25519.public.pem", "keys are not supported; use Ed25519, EC P-256 or RSA"),
        ("ed25519.private.pem", "not a PEM, DER or OpenSSH public key"),
    ],
)
def test_unsupported_key_files_are_refused_naming_the_file(
    name: str, message: str
) -> None:
    path = KEYS / name
    with pytest.raises(ConfigError) as caught:
        KeySet.from_config(AuthConfig(audience=AUD, key_files=(path,)))
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gone.pem"
    with pytest.raises(ConfigError, match=f"^{path}: no such public key file"):
        KeySet.from_config(AuthConfig(audience=AUD, key_files=(path,)))


def test_no_keys_at_all_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no token verification keys"):
        KeySet.from_config(AuthConfig(audience=AUD))


def test_jwks_keys_carry_their_kid_and_algorithms(tmp_path: Path) -> None:
    path = write_jwks(
        tmp_path,
        jwk_of("ed25519", "EdDSA", kid="ed"),
        jwk_of("p256", "ES256", kid="ec"),
        jwk_of("rsa2048", "RS256", kid="rsa"),
        jwk_of("rsa2048", "PS256", kid="pss", alg="PS256"),
        jwk_of("p256", "ES256", kid="enc", use="enc"),
    )
    keys = KeySet.from_config(AuthConfig(audience=AUD, jwks_file=path)).keys
    assert [(k.kid, k.algorithms) for k in keys] == [
        ("ed", ("EdDSA",)),
        ("ec", ("ES256",)),
        ("rsa", ("RS256", "PS256")),
        ("pss", ("PS256",)),
    ]
    assert keys[0].fingerprint == ed25519_thumbprint()
    assert keys[0].source == f"{path}#ed"


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "oct", "k": "c2VjcmV0"}, "key type 'oct' curve None is not supported"),
        ({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}, "curve 'P-384'"),
        ("not an object", "not a JSON object"),
    ],
)
def test_unsupported_jwks_keys_are_refused(
    tmp_path: Path, jwk: Any, message: str
) -> None:
    path = write_jwks(tmp_path, jwk)
    with pytest.raises(ConfigError, match=f"^{path}: key 1: .*{message}"):
        KeySet.from_config(AuthConfig(audience=AUD, jwks_file=path))


def test_jwks_with_private_key_material_is_refused(tmp_path: Path) -> None:
    path = write_jwks(tmp_path, jwk_of("ed25519", "EdDSA", d=b64(b"\x01" * 32)))
    with pytest.raises(ConfigError, match="holds private key material"):
        KeySet.from_config(AuthConfig(audience=AUD, jwks_file=path))


def test_jwks_alg_must_fit_the_key_type(tmp_path: Path) -> None:
    path = write_jwks(tmp_path, jwk_of("p256", "ES256", alg="HS256"))
    with pytest.raises(ConfigError, match="alg 'HS256' does not fit a EC key"):
        KeySet.from_config(AuthConfig(audience=AUD, jwks_file=path))


def test_jwks_kid_used_twice_is_refused(tmp_path: Path) -> None:
    path = write_jwks(
        tmp_path, jwk_of("ed25519", "EdDSA", kid="k"), jwk_of("p256", "ES256", kid="k")
    )
    with pytest.raises(ConfigError, match="key id 'k' is used twice"):
        KeySet.from_config(AuthConfig(audience=AUD, jwks_file=path))


@pytest.mark.parametrize("text", ["{", "[]", '{"keys": {}}'])
def test_a_jwks_file_that_is_not_a_key_set_is_refused(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "keys.jwks"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: not a JSON Web Key Set"):
        KeySet.from_config(AuthConfig(audience=AUD, jwks_file=path))


def secret_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "hmac.secret"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_hmac_secret_verifies_hs256_and_nothing_else(tmp_path: Path) -> None:
    secret = b"s" * 32
    v = Verifier(
        AuthConfig(audience=AUD, hmac_secret_file=secret_file(tmp_path, secret + b"\n"))
    )
    assert v.verify(jwt.encode(claims(), secret, algorithm="HS256")).sub == "alice"
    assert refusal(v, sign(claims())) == (
        TokenSignatureError,
        "algorithm 'EdDSA' is not allowed for the configured keys",
    )
    assert "s" * 32 not in repr(v.keys.keys)


def test_hmac_secret_must_be_private(tmp_path: Path) -> None:
    path = secret_file(tmp_path, b"s" * 32, 0o644)
    with pytest.raises(ConfigError, match="lets other users read the HMAC secret"):
        KeySet.from_config(AuthConfig(audience=AUD, hmac_secret_file=path))


def test_hmac_secret_must_be_long_enough(tmp_path: Path) -> None:
    path = secret_file(tmp_path, b"s" * 31)
    with pytest.raises(ConfigError, match="has 31 bytes; use at least 32"):
        KeySet.from_config(AuthConfig(audience=AUD, hmac_secret_file=path))


def test_a_public_key_is_refused_as_hmac_secret(tmp_path: Path) -> None:
    path = secret_file(tmp_path, (KEYS / "p256.public.pem").read_bytes())
    with pytest.raises(ConfigError, match="this is a key file, not an HMAC secret"):
        KeySet.from_config(AuthConfig(audience=AUD, hmac_secret_file=path))


def test_hmac_is_never_mixed_with_public_keys(tmp_path: Path) -> None:
    cfg = AuthConfig(
        audience=AUD,
        key_files=(ED_PUB,),
        hmac_secret_file=secret_file(tmp_path, b"s" * 32),
    )
    with pytest.raises(ConfigError, match="cannot be combined with public keys"):
        KeySet.from_config(cfg)


# --- Verifier: keys and headers ---


def test_a_good_token_verifies_with_its_claims() -> None:
    token = sign(claims(jti="j1", scope="read:/docs/** write:/docs/drafts/* bogus"))
    verified = verifier().verify(token)
    assert verified.sub == "alice"
    assert verified.jti == "j1"
    assert verified.grants == Grants(
        [Grant(Action.READ, b"/docs/**"), Grant(Action.WRITE, b"/docs/drafts/*")]
    )
    assert verified.rejected_scopes == ("'bogus': not of the form ACTION:PATTERN",)
    assert verified.fingerprint == hashlib.sha256(token.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("name", "alg"), [("p256", "ES256"), ("rsa2048", "RS256"), ("rsa2048", "PS256")]
)
def test_each_key_type_verifies_its_algorithms(name: str, alg: str) -> None:
    v = verifier(key_files=(KEYS / f"{name}.public.pem",))
    assert v.verify(sign(claims(), key=name, alg=alg)).sub == "alice"


def test_an_algorithm_of_another_key_type_is_refused() -> None:
    v = verifier(key_files=(KEYS / "p256.public.pem",))
    assert refusal(v, sign(claims(), key="rsa2048", alg="RS256")) == (
        TokenSignatureError,
        "algorithm 'RS256' is not allowed for the configured keys",
    )


def test_a_token_signed_by_another_key_is_refused() -> None:
    v = verifier(key_files=(KEYS / "p256.public.pem",))
    other = jwt.encode(claims(), private("p256"), algorithm="ES256")
    assert v.verify(other).sub == "alice"
    header, body, _ = other.split(".")
    forged = sign(claims(sub="mallory"), key="p256", alg="ES256").split(".")[2]
    assert refusal(v, f"{header}.{body}.{forged}") == (
        TokenSignatureError,
        "bad signature",
    )


def test_every_configured_key_is_tried() -> None:
    v = verifier(
        key_files=(ED_PUB, KEYS / "p256.public.pem", KEYS / "rsa2048.public.der")
    )
    for name, alg in (("ed25519", "EdDSA"), ("p256", "ES256"), ("rsa2048", "PS256")):
        assert v.verify(sign(claims(), key=name, alg=alg)).sub == "alice"


def test_kid_selects_the_one_key_to_try(tmp_path: Path) -> None:
    path = write_jwks(
        tmp_path,
        jwk_of("ed25519", "EdDSA", kid="one"),
        jwk_of("p256", "ES256", kid="two"),
    )
    v = verifier(key_files=(), jwks_file=path)
    assert v.verify(sign(claims(), headers={"kid": "one"})).sub == "alice"
    assert v.verify(sign(claims())).sub == "alice"
    assert refusal(v, sign(claims(), headers={"kid": "two"})) == (
        TokenSignatureError,
        "algorithm 'EdDSA' is not allowed for the configured keys",
    )
    assert refusal(v, sign(claims(), headers={"kid": "three"})) == (
        TokenSignatureError,
        "no configured key has the token's key id (kid)",
    )
    listed = sign_raw({"alg": "EdDSA", "kid": ["one"]}, json.dumps(claims()))
    assert refusal(v, listed) == (
        TokenMalformedError,
        "bad header: Key ID header parameter must be a string",
    )


def test_kid_is_ignored_when_no_key_has_one() -> None:
    assert verifier().verify(sign(claims(), headers={"kid": "anything"})).sub == "alice"


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u"])
def test_key_location_headers_are_ignored(name: str) -> None:
    pointer: Any = jwk_of("p256", "ES256") if name == "jwk" else "http://127.0.0.1:9/k"
    v = verifier()
    assert v.verify(sign(claims(), headers={name: pointer})).sub == "alice"
    attacker = sign(claims(), key="p256", alg="ES256", headers={name: pointer})
    assert refusal(v, attacker)[0] is TokenSignatureError


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"crit": ["b64"], "b64": True},
            "critical header extensions are not supported",
        ),
        ({"b64": True}, "critical header extensions are not supported"),
        (
            {"crit": ["exp"], "exp": 1},
            "bad header: Unsupported critical extension: exp",
        ),
    ],
)
def test_critical_header_extensions_are_refused(
    extra: dict[str, Any], message: str
) -> None:
    token = sign_raw({"alg": "EdDSA", **extra}, json.dumps(claims()))
    assert refusal(verifier(), token) == (TokenMalformedError, message)


def test_an_oversized_token_is_refused_before_parsing() -> None:
    token = "a" * MAX_TOKEN_BYTES + ".b.c"
    assert refusal(verifier(), token) == (TokenMalformedError, "longer than 16 KiB")
    big = sign(claims(pad="x" * MAX_TOKEN_BYTES))
    assert refusal(verifier(), big) == (TokenMalformedError, "longer than 16 KiB")


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c.d", "a b.c.d", "é.b.c", "a.b.c\n", "=.a.b"]
)
def test_what_is_not_a_compact_jws_is_malformed(token: str) -> None:
    assert refusal(verifier(), token) == (
        TokenMalformedError,
        "not a compact JWS (three base64url parts separated by '.')",
    )


def test_a_header_that_is_not_json_is_malformed() -> None:
    token = f"{b64(b'not json')}.{b64(b'{}')}.{b64(b'sig')}"
    assert refusal(verifier(), token) == (
        TokenMalformedError,
        "the header is not a JSON object",
    )


def test_a_payload_that_is_not_an_object_is_malformed() -> None:
    token = sign_raw({"alg": "EdDSA"}, "[1]")
    kind, reason = refusal(verifier(), token)
    assert kind is TokenMalformedError
    assert reason.startswith("unreadable payload or signature")


# --- Verifier: claims ---


@pytest.mark.parametrize(
    ("aud", "ok"),
    [
        (AUD, True),
        (["other", AUD], True),
        ("jwtfs:tes", False),
        ("jwtfs:test2", False),
        (["jwtfs:testing"], False),
        ("x" + AUD, False),
        ([], False),
        ("", False),
    ],
)
def test_audience_must_match_exactly(aud: Any, ok: bool) -> None:
    token = sign(claims(aud=aud))
    if ok:
        assert verifier().verify(token).sub == "alice"
        return
    kind, reason = refusal(verifier(), token)
    assert kind is TokenClaimError
    assert reason in (
        "wrong audience (this vault accepts 'jwtfs:test')",
        "the aud claim is missing",
    )


def test_audience_elements_must_be_strings() -> None:
    assert refusal(verifier(), sign(claims(aud=[AUD, 7]))) == (
        TokenClaimError,
        "wrong audience (this vault accepts 'jwtfs:test')",
    )


@pytest.mark.parametrize("claim", ["exp", "aud"])
def test_exp_and_aud_are_required(claim: str) -> None:
    assert refusal(verifier(), sign(claims(**{claim: None}))) == (
        TokenClaimError,
        f"the {claim} claim is missing",
    )


def test_issuer_is_checked_only_when_configured() -> None:
    assert verifier().verify(sign(claims(iss="anyone"))).sub == "alice"
    v = verifier(issuers=("https://issuer.test", "second"))
    assert v.verify(sign(claims(iss="second"))).sub == "alice"
    assert refusal(v, sign(claims(iss="third"))) == (
        TokenClaimError,
        "issuer not accepted",
    )
    assert refusal(v, sign(claims())) == (TokenClaimError, "the iss claim is missing")
    listed = sign_raw({"alg": "EdDSA"}, json.dumps(claims(iss=["second"])))
    assert refusal(v, listed) == (TokenClaimError, "issuer not accepted")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exp": "9999999999"}, "the exp claim is not a number"),
        ({"exp": True}, "the exp claim is not a number"),
        ({"exp": 10**400}, "the exp claim is out of range"),
        ({"nbf": "0"}, "the nbf claim is not a number"),
        ({"iat": [1]}, "the iat claim is not a number"),
        ({"scope": None}, "the scope claim is missing"),
        ({"scope": ["read:/**"]}, "the scope claim is not a string"),
        ({"sub": 42}, "bad claim: Subject must be a string"),
        ({"jti": 42}, "bad claim: JWT ID must be a string"),
    ],
)
def test_mistyped_claims_are_refused(changes: dict[str, Any], message: str) -> None:
    assert refusal(verifier(), sign(claims(**changes))) == (TokenClaimError, message)


def test_an_infinite_exp_is_out_of_range() -> None:
    body = f'{{"aud":"{AUD}","exp":1e999,"scope":"read:/**"}}'
    token = sign_raw({"alg": "EdDSA"}, body)
    assert refusal(verifier(), token) == (
        TokenClaimError,
        "the exp claim is out of range",
    )


def test_time_claims_use_the_injected_clock_and_leeway() -> None:
    now = 2_000_000_000.0
    cfg = AuthConfig(audience=AUD, key_files=(ED_PUB,), leeway=30)
    v = Verifier(cfg, clock=lambda: now)
    token = sign(claims(iat=int(now), exp=int(now) + 100))
    assert v.verify(token).exp == now + 100
    assert refusal(Verifier(cfg, clock=lambda: now + 130), token) == (
        TokenExpiredError,
        f"expired at {format_time(now + 100)}",
    )
    assert Verifier(cfg, clock=lambda: now + 129.5).verify(token).sub == "alice"
    assert refusal(Verifier(cfg, clock=lambda: now - 31), token) == (
        TokenNotYetValidError,
        f"issued in the future, at {format_time(now)}",
    )
    nbf = sign(claims(iat=None, nbf=int(now), exp=int(now) + 100))
    assert refusal(Verifier(cfg, clock=lambda: now - 31), nbf) == (
        TokenNotYetValidError,
        f"not valid before {format_time(now)}",
    )
    assert Verifier(cfg, clock=lambda: now - 30).verify(nbf).sub == "alice"


def test_float_times_are_accepted() -> None:
    exp = time.time() + 60.5
    assert verifier().verify(sign(claims(exp=exp, iat=time.time()))).exp == exp


def test_check_reports_when_a_not_yet_valid_token_starts() -> None:
    now = time.time()
    cfg = AuthConfig(audience=AUD, key_files=(ED_PUB,), leeway=10)
    verdict = Verifier(cfg).check(sign(claims(nbf=int(now) + 500, iat=int(now))))
    assert isinstance(verdict.error, TokenNotYetValidError)
    assert verdict.valid_from == int(now) + 490
    assert verdict.sub == "alice"
    forged = Verifier(cfg).check(
        sign(claims(nbf=int(now) + 500), key="p256", alg="ES256")
    )
    assert (forged.sub, forged.valid_from) == (None, None)


def test_revoked_jti_is_refused_and_reload_picks_up_new_revocations(
    tmp_path: Path,
) -> None:
    revocations = tmp_path / "revoked"
    revocations.write_text("# revoked tokens\n\n  early  \n")
    v = verifier(revocation_file=revocations)
    assert refusal(v, sign(claims(jti="early"))) == (
        TokenRevokedError,
        "revoked (its jti is in the revocation file)",
    )
    late = sign(claims(jti="late"))
    assert v.verify(late).jti == "late"
    assert v.verify(sign(claims(jti="# revoked tokens"))).jti == "# revoked tokens"
    revocations.write_text("early\nlate\n")
    v.reload_keys()
    assert v.generation == 1
    assert refusal(v, late)[0] is TokenRevokedError


def test_a_missing_revocation_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    with pytest.raises(ConfigError, match=f"^{path}: no such revocation file"):
        verifier(revocation_file=path)


def test_reload_keys_replaces_keys_at_once_or_not_at_all(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pub"
    shutil.copy(ED_PUB, key_file)
    v = verifier(key_files=(key_file,))
    ed_token, ec_token = sign(claims()), sign(claims(), key="p256", alg="ES256")
    assert v.verify(ed_token).sub == "alice"

    key_file.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=f"^{key_file}: "):
        v.reload_keys()
    assert v.verify(ed_token).sub == "alice"
    assert v.generation == 0

    shutil.copy(KEYS / "p256.public.pem", key_file)
    v.reload_keys()
    assert v.verify(ec_token).sub == "alice"
    assert refusal(v, ed_token)[0] is TokenSignatureError


def test_verify_never_logs_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    token = sign(claims())
    verifier().verify(token)
    refusal(verifier(), token + "x")
    assert token.split(".")[2][:20] not in caplog.text


@st.composite
def garbage_tokens(draw: st.DrawFn) -> str:
    """Tokens of the right shape with random JSON, and shapeless text."""
    if draw(st.booleans()):
        return draw(st.text(max_size=300))
    json_values = st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=10,
    )
    header = draw(
        st.dictionaries(
            st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "x"]),
            json_values | st.sampled_from(["EdDSA", "HS256", "none", "ES256"]),
        )
    )
    body = draw(
        st.dictionaries(
            st.sampled_from(["aud", "exp", "nbf", "iat", "sub", "jti", "scope", "iss"]),
            json_values | st.just(AUD) | st.integers(0, 2**40),
        )
    )
    parts = [
        b64(json.dumps(header).encode()),
        b64(json.dumps(body).encode()),
        b64(draw(st.binary(max_size=80))),
    ]
    return ".".join(parts)


GARBAGE_VERIFIER = Verifier(
    AuthConfig(audience=AUD, key_files=(ED_PUB, KEYS / "p256.public.pem"))
)


@settings(max_examples=300, deadline=None)
@given(garbage_tokens())
def test_garbage_raises_only_auth_errors(token: str) -> None:
    with pytest.raises(AuthError):
        GARBAGE_VERIFIER.verify(token)
    report = inspect_token(token, GARBAGE_VERIFIER)
    assert not report.valid and report.reason


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["aud", "exp", "nbf", "iat", "sub", "jti", "scope", "iss"]),
        st.none()
        | st.booleans()
        | st.floats()
        | st.integers()
        | st.text(max_size=20)
        | st.lists(st.text(max_size=5), max_size=2)
        | st.just(AUD),
    )
)
def test_well_signed_garbage_claims_give_a_token_or_an_auth_error(
    body: dict[str, Any],
) -> None:
    body.setdefault("aud", AUD)
    body.setdefault("exp", time.time() + 60)
    token = sign_raw({"alg": "EdDSA"}, json.dumps(body))
    try:
        verified = GARBAGE_VERIFIER.verify(token)
    except AuthError:
        return
    assert isinstance(body["scope"], str)
    assert verified.exp == body["exp"]


# --- issuing ---


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def part(text: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        )
        return data

    header, body, _ = token.split(".")
    return part(header), part(body)


def test_issue_token_makes_the_documented_claims() -> None:
    token = issue_token(
        private("ed25519"),
        audience=AUD,
        read=["/docs/**", "/a b/100%/*.txt", "/drafts/**"],
        write=["/drafts/**"],
        ttl_seconds=3600,
        sub="alice",
        issuer="me",
        kid="k1",
        now=1_900_000_000.7,
    )
    header, body = decode_unverified(token)
    assert header == {"alg": "EdDSA", "kid": "k1", "typ": "JWT"}
    jti = body.pop("jti")
    assert isinstance(jti, str) and len(jti) == 22
    assert body == {
        "aud": AUD,
        "iat": 1_900_000_000,
        "nbf": 1_900_000_000,
        "exp": 1_900_003_600,
        "scope": "read:/docs/** read:/a%20b/100%25/*.txt write:/drafts/**",
        "sub": "alice",
        "iss": "me",
    }
    v = Verifier(
        AuthConfig(audience=AUD, key_files=(ED_PUB,)), clock=lambda: 1_900_000_001
    )
    assert v.verify(token).grants.can_read(b"/a b/100%/x.txt")


def test_issued_tokens_verify_now_and_have_distinct_jtis() -> None:
    def issue() -> str:
        return issue_token(
            private("ed25519"),
            audience=AUD,
            read=["/**"],
            write=[],
            ttl_seconds=60,
            sub=None,
            issuer=None,
        )

    first, second = verifier().verify(issue()), verifier().verify(issue())
    assert first.sub is None
    assert first.jti != second.jti
    assert abs(first.exp - (time.time() + 60)) < 5


@pytest.mark.parametrize(
    ("read", "write", "ttl", "message"),
    [
        (["/a/../b"], [], 60, "/a/../b: '.' and '..' components are not allowed"),
        (["docs"], [], 60, "docs: a pattern must be an absolute path"),
        ([], [], 60, "grant at least one path to read or write"),
        (["/**"], [], 0, "the token lifetime must be positive"),
        (["/x"] * 1, ["/" + "y" * MAX_TOKEN_BYTES], 60, "the token would exceed"),
    ],
)
def test_issue_token_refuses_bad_input(
    read: list[str], write: list[str], ttl: int, message: str
) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("*", r"\*").replace(".", r"\.")
    ):
        issue_token(
            private("ed25519"),
            audience=AUD,
            read=read,
            write=write,
            ttl_seconds=ttl,
            sub=None,
            issuer=None,
        )


@pytest.mark.parametrize("key", ["p256", "rsa2048"])
def test_issue_token_needs_an_ed25519_key(key: str) -> None:
    with pytest.raises(ConfigError, match="not an Ed25519 private key"):
        issue_token(
            private(key),
            audience=AUD,
            read=["/**"],
            write=[],
            ttl_seconds=60,
            sub=None,
            issuer=None,
        )


def test_encode_pattern() -> None:
    assert encode_pattern("/a b/100%/é/*.txt") == "/a%20b/100%25/%C3%A9/*.txt"
    assert encode_pattern(os.fsdecode(b"/\xff")) == "/%FF"
    assert encode_pattern('/"q"\\') == "/%22q%22%5C"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("8h", 28800),
        ("30d", 2592000),
        ("2w", 1209600),
        ("3600", 3600),
        (" 5m ", 300),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "m", "1.5h", "-5s", "10y", "1h30m", "٣s", "0", "0d"]
)
def test_parse_duration_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        parse_duration(text)


def test_parse_duration_message_explains_the_form() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("soon")
    assert str(caught.value) == (
        "'soon' is not a duration; write a number with an optional unit s, m, h, "
        "d or w, e.g. 90s, 15m, 8h, 30d, 2w"
    )


# --- inspection ---


def test_inspect_a_valid_token() -> None:
    token = sign(
        claims(
            iat=1_900_000_000, exp=1_900_000_600, jti="j", iss="me", scope="read:/a/**"
        ),
        headers={"kid": "k"},
    )
    v = Verifier(
        AuthConfig(audience=AUD, key_files=(ED_PUB,)), clock=lambda: 1_900_000_001
    )
    report = inspect_token(token, v)
    assert report.valid and report.reason is None
    assert (report.alg, report.kid, report.sub, report.aud, report.iss) == (
        "EdDSA",
        "k",
        "alice",
        (AUD,),
        "me",
    )
    assert (report.iat, report.nbf, report.exp) == (
        "2030-03-17T17:46:40Z",
        None,
        "2030-03-17T17:56:40Z",
    )
    assert report.jti == "j"
    assert report.grants_in_words == [
        "read /a/** (the directory /a and everything below it)"
    ]


def test_inspect_an_expired_token_shows_its_claims_and_why() -> None:
    token = sign(claims(exp=1_000_000_000, iat=None, aud=["x", AUD], scope="read:/b x"))
    report = inspect_token(token, verifier())
    assert not report.valid
    assert report.reason == "expired at 2001-09-09T01:46:40Z"
    assert report.aud == ("x", AUD)
    assert report.grants_in_words == ["read /b (this path only)"]
    assert report.rejected_scopes == ("'x': not of the form ACTION:PATTERN",)


def test_inspect_shows_mistyped_claims_as_json() -> None:
    report = inspect_token(sign(claims(exp="9999999999", sub=None)), verifier())
    assert (report.exp, report.sub, report.valid) == ('"9999999999"', None, False)
    assert report.reason == "the exp claim is not a number"


def test_inspect_garbage() -> None:
    report = inspect_token("garbage", verifier())
    assert (report.alg, report.sub, report.aud, report.valid) == (None, None, (), False)
    assert report.reason == "not a compact JWS (three base64url parts separated by '.')"
    assert report.grants_in_words == []
