"""Properties of the scope matcher and the token decoder, over generated input.

The matcher is checked against the plain reference matcher of
``tests/unit/test_scope.py`` (imported, not copied), now through the text a
token carries: every way of percent-encoding a pattern decodes to the same
bytes and grants the same paths. Unicode spellings are never normalised into
each other, and no non-canonical path is ever granted.

The decoder gets garbage of every layer: shapeless text, base64url noise,
unsigned JSON, and payloads and headers signed by the configured key, so the
parsing after the signature check is exercised too. It must only ever raise
an ``AuthError`` subclass, and answer fast.
"""

from __future__ import annotations

import base64
import json
import time
import unicodedata
from pathlib import Path

import jwt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jwtfs.auth.scope import Action, Grant, Grants, parse_pattern, parse_scope
from jwtfs.auth.sources import TokenSource
from jwtfs.auth.tokens import VerifiedToken, Verifier
from jwtfs.config import AuthConfig
from jwtfs.errors import AuthError
from tests.security.timing import FAST, fastest
from tests.unit.test_scope import paths_near, ref_can_list, ref_match

KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
AUD = "jwtfs:properties"

# --- percent-encoding: any spelling of a pattern means the same bytes ---

# Pieces a name is made of, with what must be escaped well represented: bytes
# one by one (lone bytes over 0x7F are not UTF-8) and whole UTF-8 characters.
NAME_PIECES = st.one_of(
    st.sampled_from([b"a", b"b", b"*"]),
    st.sampled_from(b' %"\\\x01\x1f\x7f').map(lambda b: bytes([b])),
    st.integers(0x80, 0xFF).map(lambda b: bytes([b])),
    st.integers(0x21, 0x7E).filter(lambda b: b != ord("/")).map(lambda b: bytes([b])),
    st.sampled_from(["é", "한", "😀", "\u0085", "\u00a0"]).map(str.encode),
)
# A byte that parse_pattern takes as itself (printable ASCII, not '%').
_PLAIN_OK = frozenset(range(0x21, 0x7F)) - {ord("%")}


@st.composite
def raw_patterns(draw: st.DrawFn) -> bytes:
    names = draw(
        st.lists(
            st.lists(NAME_PIECES, min_size=1, max_size=6).map(b"".join),
            max_size=4,
        )
    )
    names = [n for n in names if b"**" not in n and n not in (b".", b"..")]
    if draw(st.booleans()):
        names.append(b"**")
    return b"/" + b"/".join(names) if names else b"/"


@st.composite
def spellings(draw: st.DrawFn, pattern: bytes) -> str:
    """One of the many texts that decode to ``pattern``.

    Each byte is written as itself where that is allowed, or as ``%XX`` in
    either case of hex digits; a run that is valid UTF-8 may be written as
    its characters.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        byte = pattern[i]
        if byte >= 0x80:
            for width in (2, 3, 4):
                try:
                    char = pattern[i : i + width].decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if len(char) == 1 and draw(st.booleans()):
                    out.append(char)
                    i += width
                    break
            else:
                out.append(_escape(draw, byte))
                i += 1
            continue
        plain = byte in _PLAIN_OK and (byte == ord("/") or draw(st.booleans()))
        out.append(chr(byte) if plain else _escape(draw, byte))
        i += 1
    return "".join(out)


def _escape(draw: st.DrawFn, byte: int) -> str:
    text = f"%{byte:02X}"
    return text.lower() if draw(st.booleans()) else text


@st.composite
def spelled_pattern_and_path(draw: st.DrawFn) -> tuple[bytes, str, bytes]:
    pattern = draw(raw_patterns())
    return pattern, draw(spellings(pattern)), draw(paths_near(pattern))


@settings(max_examples=1000)
@given(spelled_pattern_and_path())
def test_every_percent_spelling_decodes_to_the_same_bytes_and_grants(
    case: tuple[bytes, str, bytes],
) -> None:
    pattern, text, path = case
    assert parse_pattern(text) == pattern
    grants, rejected = parse_scope(f"read:{text} write:{text}")
    assert rejected == ()
    g = Grants(grants)
    assert g == Grants([Grant(Action.WRITE, pattern)])
    assert g.can_read(path) == ref_match(pattern, path)
    assert g.can_write(path) == ref_match(pattern, path)
    assert g.can_list(path) == ref_can_list(pattern, path)


# --- Unicode: NFC and NFD spellings are different names ---

COMPOSABLE = st.sampled_from("éèêëáàâäåçñöüÅÉṩḱǖ가한글")
UNICODE_NAMES = st.lists(
    st.one_of(COMPOSABLE, st.sampled_from("abz-_. ")), min_size=1, max_size=6
).map("".join)


@settings(max_examples=500)
@given(st.lists(UNICODE_NAMES, min_size=1, max_size=3), st.booleans())
def test_nfc_and_nfd_spellings_never_match_each_other(
    names: list[str], recursive: bool
) -> None:
    nfc = "/" + "/".join(unicodedata.normalize("NFC", n) for n in names)
    nfd = "/" + "/".join(unicodedata.normalize("NFD", n) for n in names)
    assume(nfc != nfd and "/./" not in nfc + "/" and "/../" not in nfc + "/")
    for granted, other in ((nfc, nfd), (nfd, nfc)):
        grant_text = granted + "/**" if recursive else granted
        [grant], rejected = parse_scope(f"read:{_encode(grant_text)}")
        assert rejected == ()
        g = Grants([grant])
        assert g.can_read(granted.encode())
        assert not g.can_read(other.encode())
        assert not g.can_read(other.encode() + b"/x")
        assert not g.can_list(other.encode())


def _encode(text: str) -> str:
    """Percent-encode what a scope item cannot hold (here, the space)."""
    return text.replace("%", "%25").replace(" ", "%20")


# --- paths that are not canonical are granted nothing ---


@st.composite
def non_canonical(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(st.sampled_from([b"a", b"b", b"\xc3\xa9"]), max_size=4))
    at = draw(st.integers(0, len(names)))
    damage = draw(st.sampled_from([b".", b"..", b"", b"a\x00", b"..\x00", b"\x00"]))
    broken = b"/" + b"/".join([*names[:at], damage, *names[at:]])
    form = draw(st.sampled_from(["inner", "trailing-slash", "relative"]))
    if form == "trailing-slash":
        broken = b"/" + b"/".join(names) + b"/"
    elif form == "relative":
        broken = b"/".join(names) or b"."
    assume(broken != b"/")
    return broken


@settings(max_examples=500)
@given(non_canonical())
def test_a_path_that_is_not_canonical_is_granted_nothing(path: bytes) -> None:
    everything = Grants([Grant(Action.WRITE, b"/**"), Grant(Action.WRITE, b"/*")])
    assert not everything.can_read(path)
    assert not everything.can_write(path)
    assert not everything.can_list(path)
    assert not everything.reaches(path, is_dir=True)


# --- a name is never granted by a sibling it begins like ---


@settings(max_examples=500)
@given(
    st.lists(st.sampled_from(b"ab\xc3\xa9-."), min_size=1, max_size=4).map(bytes),
    st.lists(st.sampled_from(b"ab\xc3\xa9-."), min_size=1, max_size=3).map(bytes),
    st.booleans(),
)
def test_a_grant_never_reaches_a_sibling_that_shares_its_prefix(
    name: bytes, suffix: bytes, longer: bool
) -> None:
    assume(name not in (b".", b"..") and name + suffix not in (b".", b".."))
    sibling, granted = (name + suffix, name) if longer else (name, name + suffix)
    g = Grants([Grant(Action.WRITE, b"/" + granted + b"/**")])
    assert g.can_read(b"/" + granted + b"/x")
    for path in (b"/" + sibling, b"/" + sibling + b"/x"):
        assert not g.can_read(path)
        assert not g.can_write(path)
        assert not g.can_list(path)


# --- the decoder over garbage ---

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(header: bytes, payload: bytes) -> str:
    algorithm = jwt.get_algorithm_by_name("EdDSA")
    signing_input = f"{b64(header)}.{b64(payload)}"
    key = algorithm.prepare_key((KEYS / "ed25519.private.pem").read_bytes())
    return f"{signing_input}.{b64(algorithm.sign(signing_input.encode(), key))}"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers()
    | st.text(max_size=8)
    | st.just(AUD),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
CLAIM_NAMES = st.sampled_from(["aud", "exp", "nbf", "iat", "scope", "jti", "sub"])
HEADER_NAMES = st.sampled_from(["kid", "typ", "crit", "b64", "jwk", "jku", "zip"])


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 6000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    core = b"[]" if opener == b"[" else b"1"
    return opener * depth + core + closer * depth


@st.composite
def garbage_tokens(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.text(max_size=200))
    if kind == 1:
        raw = draw(st.binary(max_size=200))
        return raw.decode("utf-8", "surrogateescape")
    if kind == 2:
        noise = st.text(alphabet=B64URL, max_size=60)
        return ".".join(draw(st.lists(noise, min_size=1, max_size=5)))
    if kind == 3:
        blobs = draw(st.lists(st.binary(max_size=60), min_size=3, max_size=3))
        return ".".join(b64(blob) for blob in blobs)
    if kind == 4:
        claims = draw(st.dictionaries(CLAIM_NAMES, JSON))
        return _sign(b'{"alg":"EdDSA"}', json.dumps(claims).encode())
    if kind == 5:
        header = {"alg": "EdDSA", **draw(st.dictionaries(HEADER_NAMES, JSON))}
        payload = draw(st.one_of(st.binary(max_size=120), nested()))
        return _sign(json.dumps(header).encode(), payload)
    raw_header = draw(st.one_of(nested(), st.binary(max_size=60)))
    return f"{b64(raw_header)}.{b64(b'{}')}.{b64(draw(st.binary(max_size=64)))}"


VERIFIER = Verifier(
    AuthConfig(
        audience=AUD,
        key_files=(KEYS / "ed25519.public.pem", KEYS / "p256.public.der"),
    )
)


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(garbage_tokens())
def test_garbage_tokens_raise_only_auth_errors_and_fast(token: str) -> None:
    verified: VerifiedToken | None = None
    try:
        verified = VERIFIER.verify(token)
    except AuthError as err:
        assert str(err)
    elapsed = fastest(lambda: VERIFIER.check(token))
    assert elapsed < FAST, f"{elapsed * 1000:.1f} ms"
    if verified is not None:
        # Only a signed, well-formed set of claims can get here.
        assert isinstance(verified, VerifiedToken)
        assert verified.exp > time.time() - VERIFIER.leeway
    verdict = VERIFIER.check(token)
    assert (verdict.token is None) == (verdict.error is not None)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("garbage") / "t.jwt"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(st.lists(garbage_tokens(), min_size=1, max_size=4))
def test_a_token_file_of_garbage_never_makes_the_source_raise(
    token_file: Path, tokens: list[str]
) -> None:
    lines = [t for t in tokens if "\n" not in t and "\r" not in t]
    text = "\n".join(lines) + "\n"
    token_file.write_bytes(text.encode("utf-8", "surrogateescape"))
    source = TokenSource(VERIFIER, token_file, None)
    source.refresh()
    valid = [t for t in lines if VERIFIER.check(t.strip()).token is not None]
    assert source.has_valid_token() == bool(valid)
