"""Scope parsing and path matching (jwtfs.auth.scope)."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jwtfs.auth.scope import (
    Action,
    Grant,
    Grants,
    InvalidPatternError,
    format_pattern,
    parse_pattern,
    parse_scope,
)

R, W = Action.READ, Action.WRITE


def grants(scope: str) -> Grants:
    parsed, rejected = parse_scope(scope)
    assert rejected == ()
    return Grants(parsed)


# --- parsing ---


def test_parse_scope_keeps_order_and_drops_duplicates() -> None:
    parsed, rejected = parse_scope("read:/docs/**  write:/docs/drafts/** read:/docs/**")
    assert parsed == (Grant(R, b"/docs/**"), Grant(W, b"/docs/drafts/**"))
    assert rejected == ()


def test_parse_scope_of_empty_claim_grants_nothing() -> None:
    assert parse_scope("") == ((), ())
    assert parse_scope("   ") == ((), ())


def test_percent_escapes_decode_to_exact_bytes() -> None:
    assert parse_pattern("/a%20b/caf%C3%A9/%ff") == b"/a b/caf\xc3\xa9/\xff"
    assert parse_pattern("/100%25") == b"/100%"


def test_raw_non_ascii_is_taken_as_its_utf8_bytes() -> None:
    assert parse_pattern("/café") == "/café".encode()


def test_encoded_star_is_the_wildcard_too() -> None:
    assert parse_pattern("/a%2A") == b"/a*"
    assert grants("read:/a%2A").can_read(b"/abc")


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("openid", "'openid': not of the form ACTION:PATTERN"),
        ("admin:/x", "'admin:/x': unknown action (use read or write)"),
        ("READ:/x", "'READ:/x': unknown action (use read or write)"),
        (
            "read:docs/**",
            "'read:docs/**': a pattern must be an absolute path starting with '/'",
        ),
        ("read:", "'read:': a pattern must be an absolute path starting with '/'"),
        ("read:/a/../b", "'read:/a/../b': '.' and '..' components are not allowed"),
        ("read:/a/./b", "'read:/a/./b': '.' and '..' components are not allowed"),
        ("read:/a/..", "'read:/a/..': '.' and '..' components are not allowed"),
        (
            "read:/a/%2E%2E/b",
            "'read:/a/%2E%2E/b': '.' and '..' components are not allowed",
        ),
        ("read:/a//b", "'read:/a//b': empty components ('//') are not allowed"),
        (
            "read:/docs/",
            "'read:/docs/': a trailing '/' is not allowed "
            "(end with '/**' for a whole directory)",
        ),
        ("read:/a%00b", "'read:/a%00b': NUL bytes are not allowed"),
        ("read:/a%2Fb", "'read:/a%2Fb': an encoded '/' (%2F) is not allowed"),
        ("read:/a%2fb", "'read:/a%2fb': an encoded '/' (%2F) is not allowed"),
        ("read:/a%zz", "'read:/a%zz': '%' must be followed by two hex digits"),
        ("read:/a%4", "'read:/a%4': '%' must be followed by two hex digits"),
        (
            "read:/a/**/b",
            "'read:/a/**/b': '**' is only allowed as the whole last component ('/**')",
        ),
        (
            "read:/a/b**",
            "'read:/a/b**': '**' is only allowed as the whole last component ('/**')",
        ),
        ("read:/a\tb", "'read:/a\\tb': control characters must be percent-encoded"),
        ("read:/\ud800", "'read:/\\ud800': the pattern is not valid Unicode"),
    ],
)
def test_invalid_items_are_ignored_with_their_reason(item: str, reason: str) -> None:
    parsed, rejected = parse_scope(f"read:/ok {item}")
    assert parsed == (Grant(R, b"/ok"),)
    assert rejected == (reason,)


def test_long_rejected_items_are_cut_short_in_the_reason() -> None:
    _, rejected = parse_scope("x" * 200)
    assert rejected == (f"'{'x' * 80}…': not of the form ACTION:PATTERN",)


def test_grant_refuses_an_invalid_pattern() -> None:
    with pytest.raises(InvalidPatternError, match=r"'\.' and '\.\.' components"):
        Grant(R, b"/a/../b")


# --- matching ---


def test_exact_pattern_matches_only_that_path() -> None:
    g = grants("read:/docs/a.txt")
    assert g.can_read(b"/docs/a.txt")
    assert not g.can_read(b"/docs/a.txt2")
    assert not g.can_read(b"/docs/a.tx")
    assert not g.can_read(b"/docs/a.txt/b")
    assert not g.can_read(b"/docs")
    assert not g.can_read(b"/Docs/a.txt")


def test_star_stays_within_one_component() -> None:
    g = grants("read:/docs/*.txt")
    assert g.can_read(b"/docs/a.txt")
    assert g.can_read(b"/docs/.txt")
    assert g.can_read(b"/docs/x.y.txt")
    assert not g.can_read(b"/docs/sub/a.txt")
    assert not g.can_read(b"/docs/a.txt.bak")
    assert not g.can_read(b"/docs")


def test_several_stars_in_one_component() -> None:
    g = grants("read:/a*b*c")
    assert g.can_read(b"/abc")
    assert g.can_read(b"/aXbYc")
    assert g.can_read(b"/abbc")
    assert not g.can_read(b"/ab")
    assert not g.can_read(b"/acb")
    assert not g.can_read(b"/a/b/c")


def test_star_matches_a_literal_star_in_a_name() -> None:
    assert grants("read:/*").can_read(b"/*")
    assert grants("read:/a*").can_read(b"/a*b")


def test_double_star_matches_the_directory_itself_and_all_below() -> None:
    g = grants("read:/docs/**")
    assert g.can_read(b"/docs")
    assert g.can_read(b"/docs/a")
    assert g.can_read(b"/docs/a/b/c")
    assert not g.can_read(b"/docsx")
    assert not g.can_read(b"/doc")
    assert not g.can_read(b"/")
    assert not g.can_read(b"/other/docs")


def test_double_star_alone_matches_everything_including_the_root() -> None:
    g = grants("read:/**")
    assert g.can_read(b"/")
    assert g.can_read(b"/a")
    assert g.can_read(b"/a/b/c")
    assert not g.can_write(b"/a")


def test_slash_alone_is_the_root_only() -> None:
    g = grants("read:/")
    assert g.can_read(b"/")
    assert not g.can_read(b"/a")
    assert g.can_list(b"/")
    assert not g.can_list(b"/a")


def test_matching_is_on_exact_bytes_never_unicode_normalised() -> None:
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    g = grants(f"read:/{nfc}/**")
    assert g.can_read(f"/{nfc}/x".encode())
    assert not g.can_read(f"/{nfd}/x".encode())


def test_non_utf8_names_match_their_percent_encoded_bytes() -> None:
    g = grants("read:/%FF%FE/**")
    assert g.can_read(b"/\xff\xfe/x")
    assert not g.can_read(b"/\xff/x")


def test_write_implies_read_but_not_the_other_way() -> None:
    g = grants("write:/drafts/** read:/docs/**")
    assert g.can_read(b"/drafts/a")
    assert g.can_write(b"/drafts/a")
    assert g.can_read(b"/docs/a")
    assert not g.can_write(b"/docs/a")


@pytest.mark.parametrize(
    "path",
    [b"", b"docs/a", b"/docs/", b"/docs//a", b"/docs/./a", b"/docs/../x", b"/a\0"],
)
def test_non_canonical_paths_match_nothing(path: bytes) -> None:
    g = grants("write:/**")
    assert not g.can_read(path)
    assert not g.can_write(path)
    assert not g.can_list(path)
    assert not g.reaches(path, is_dir=True)


def test_can_list_the_directories_on_the_way_to_a_grant() -> None:
    g = grants("read:/docs/drafts/**")
    assert g.can_list(b"/")
    assert g.can_list(b"/docs")
    assert g.can_list(b"/docs/drafts")
    assert g.can_list(b"/docs/drafts/2024")
    assert not g.can_list(b"/docs/other")
    assert not g.can_list(b"/src")
    assert not g.can_read(b"/docs")


def test_can_list_through_a_star_component() -> None:
    g = grants("read:/*/public/**")
    assert g.can_list(b"/")
    assert g.can_list(b"/alice")
    assert g.can_list(b"/alice/public")
    assert g.can_list(b"/alice/public/x")
    assert not g.can_list(b"/alice/private")


def test_can_list_for_a_single_file_grant() -> None:
    g = grants("read:/docs/a.txt")
    assert g.can_list(b"/")
    assert g.can_list(b"/docs")
    assert not g.can_list(b"/docs/a.txt/x")
    assert not g.can_list(b"/other")


def test_reaches_files_by_match_and_directories_by_what_lies_below() -> None:
    g = grants("read:/docs/drafts/** write:/inbox/*.eml")
    assert g.reaches(b"/docs", is_dir=True)
    assert not g.reaches(b"/docs", is_dir=False)
    assert g.reaches(b"/docs/drafts/a", is_dir=False)
    assert g.reaches(b"/inbox/m.eml", is_dir=False)
    assert not g.reaches(b"/inbox/m.txt", is_dir=False)
    assert g.reaches(b"/inbox", is_dir=True)
    assert not g.reaches(b"/docs/public", is_dir=True)


def test_empty_grants_allow_nothing() -> None:
    g = Grants.empty()
    assert g.is_empty
    assert not g.can_read(b"/")
    assert not g.can_list(b"/")
    assert not g.reaches(b"/", is_dir=True)
    assert g.describe() == []


# --- the Grants value ---


def test_union_allows_what_either_allows() -> None:
    a, b = grants("read:/a/**"), grants("write:/b")
    both = Grants.union([a, b])
    assert both == a | b
    assert both.can_read(b"/a/x") and both.can_write(b"/b")
    assert not both.can_write(b"/a/x")
    assert both.items == (Grant(R, b"/a/**"), Grant(W, b"/b"))


def test_read_is_dropped_where_write_covers_the_same_pattern() -> None:
    assert grants("read:/x write:/x") == grants("write:/x")
    assert grants("read:/x") != grants("write:/x")
    assert hash(grants("read:/x write:/x")) == hash(grants("write:/x"))


def test_describe_says_each_grant_in_words() -> None:
    g = grants(
        "write:/docs/** read:/** read:/notes/*.md read:/a%20b/c read:/ "
        "read:/*/public/**"
    )
    assert g.describe() == [
        "read / (the mount root itself, nothing below it)",
        "read everything (the whole mount)",
        "read /*/public/** (every directory matching /*/public and everything "
        "below it; '*' stands for any run of characters within one name)",
        "read /a b/c (this path only)",
        "read and write /docs/** (the directory /docs and everything below it)",
        "read /notes/*.md (the paths matching it; '*' stands for any run of "
        "characters within one name)",
    ]


def test_describe_escapes_unprintable_names() -> None:
    assert grants("read:/a%0Ab").describe() == ["read '/a\\nb' (this path only)"]


def test_to_scope_item_round_trips() -> None:
    grant = Grant(W, b"/a b/%/\xc3\xa9/\xff/*")
    assert grant.to_scope_item() == "write:/a%20b/%25/%C3%A9/%FF/*"
    assert parse_scope(grant.to_scope_item()) == ((grant,), ())


# --- properties against a reference ---


def ref_name(pattern: bytes, name: bytes) -> bool:
    """Glob one name, '*' being any run of bytes: plain recursion, no fnmatch."""
    if not pattern:
        return not name
    if pattern[:1] == b"*":
        return any(ref_name(pattern[1:], name[i:]) for i in range(len(name) + 1))
    return bool(name) and pattern[:1] == name[:1] and ref_name(pattern[1:], name[1:])


def ref_split(path: bytes) -> list[bytes]:
    return [] if path == b"/" else path[1:].split(b"/")


def ref_match(pattern: bytes, path: bytes) -> bool:
    parts, names = ref_split(pattern), ref_split(path)
    if parts and parts[-1] == b"**":
        parts = parts[:-1]
        if len(names) < len(parts):
            return False
        names = names[: len(parts)]
    if len(parts) != len(names):
        return False
    return all(ref_name(p, n) for p, n in zip(parts, names, strict=True))


def ref_can_list(pattern: bytes, directory: bytes) -> bool:
    """Is there a path at or below ``directory`` that ``pattern`` matches?

    Tried by construction: the directory itself, and the directory extended by
    one witness name (the component with its stars removed) per pattern
    component still to come.
    """
    parts = [p for p in ref_split(pattern) if p != b"**"]
    names = ref_split(directory)
    candidates = [names]
    for length in range(len(names) + 1, len(parts) + 1):
        tail = [parts[i].replace(b"*", b"") or b"w" for i in range(len(names), length)]
        candidates.append(names + tail)
    return any(ref_match(pattern, b"/" + b"/".join(c)) for c in candidates)


# Few distinct atoms, so that patterns and paths often almost match.
NAME_ATOMS = st.sampled_from([b"a", b"b", b"*", b"*", b"\xc3\xa9"])
PATH_ATOMS = st.sampled_from([b"a", b"a", b"b", b"*", b"\xc3\xa9", b"\xc3"])
PATH_NAMES = st.lists(PATH_ATOMS, min_size=1, max_size=5).map(b"".join)
FILLS = st.lists(PATH_ATOMS, max_size=3).map(b"".join)


@st.composite
def patterns(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.lists(NAME_ATOMS, min_size=1, max_size=5), max_size=4))
    names = [n for n in map(b"".join, parts) if b"**" not in n]
    if draw(st.booleans()):
        names.append(b"**")
    return b"/" + b"/".join(names) if names else b"/"


@st.composite
def paths_near(draw: st.DrawFn, pattern: bytes) -> bytes:
    """A path made from ``pattern``: each '*' filled in, then maybe a byte dropped
    (a near miss), components cut off or added."""
    names = []
    for part in ref_split(pattern):
        if part == b"**":
            names += draw(st.lists(PATH_NAMES, max_size=3))
            continue
        pieces = part.split(b"*")
        fills = [draw(FILLS) for _ in pieces[1:]] + [b""]
        name = b"".join(p + f for p, f in zip(pieces, fills, strict=True))
        names.append(name or b"a")
    near_miss, cut = draw(st.booleans()), draw(st.booleans())
    if names and near_miss:
        i = draw(st.integers(0, len(names) - 1))
        j = draw(st.integers(0, len(names[i]) - 1))
        names[i] = names[i][:j] + names[i][j + 1 :] or b"a"
    if cut:
        names = names[: draw(st.integers(0, len(names)))]
    names += draw(st.lists(PATH_NAMES, max_size=2))
    return b"/" + b"/".join(names)


def words(alphabet: bytes, longest: int) -> list[bytes]:
    """Every string over ``alphabet`` of at most ``longest`` bytes."""
    return [
        bytes(w)
        for n in range(longest + 1)
        for w in itertools.product(alphabet, repeat=n)
    ]


def test_one_component_globs_agree_with_the_reference_exhaustively() -> None:
    names = [w for w in words(b"ab*", 4) if w]
    for glob in words(b"ab*", 5):
        if not glob or b"**" in glob:
            continue
        g = Grants([Grant(R, b"/" + glob)])
        for name in names:
            assert g.can_read(b"/" + name) == ref_name(glob, name), (glob, name)


@st.composite
def grants_and_path(draw: st.DrawFn) -> tuple[list[tuple[Action, bytes]], bytes]:
    items = draw(st.lists(st.tuples(st.sampled_from(Action), patterns()), max_size=4))
    random_path = st.lists(PATH_NAMES, max_size=5).map(lambda n: b"/" + b"/".join(n))
    near = [paths_near(p) for _, p in items]
    return items, draw(st.one_of(random_path, *near))


@settings(max_examples=1000)
@given(grants_and_path())
def test_can_read_and_can_write_agree_with_the_reference(
    case: tuple[list[tuple[Action, bytes]], bytes],
) -> None:
    items, path = case
    g = Grants(Grant(action, pattern) for action, pattern in items)
    assert g.can_read(path) == any(ref_match(p, path) for _, p in items)
    assert g.can_write(path) == any(ref_match(p, path) for a, p in items if a is W)
    assert g.reaches(path, is_dir=False) == g.can_read(path)


@settings(max_examples=1000)
@given(grants_and_path())
def test_can_list_agrees_with_the_reference(
    case: tuple[list[tuple[Action, bytes]], bytes],
) -> None:
    items, path = case
    g = Grants(Grant(action, pattern) for action, pattern in items)
    assert g.can_list(path) == any(ref_can_list(p, path) for _, p in items)
    assert g.reaches(path, is_dir=True) == g.can_list(path)


@given(patterns())
def test_format_pattern_round_trips_through_parse_pattern(pattern: bytes) -> None:
    text = format_pattern(pattern)
    assert text.isascii() and " " not in text
    assert parse_pattern(text) == pattern
