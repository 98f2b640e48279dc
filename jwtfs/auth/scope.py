"""Path-scope grants: what a token's ``scope`` claim lets it read and write.

The claim is a space-separated list of ``ACTION:PATTERN`` items, for example
``"read:/docs/** write:/docs/drafts/*.md"``. Actions are ``read`` and ``write``;
``write`` implies ``read``. Items that are not of this form (an unrelated OAuth
scope such as ``openid``, an unknown action, an invalid pattern) are ignored
and reported with a reason, so one bad item never widens or voids the rest.

How a pattern is read, and the choices made:

* It is an absolute path. ``%XX`` stands for the byte ``XX``; every other
  character stands for its UTF-8 bytes. Patterns are decoded into bytes
  first and matched against the exact bytes of the path, never normalised:
  an NFC and an NFD spelling of one name are two different names.
* After decoding, ``*`` is the wildcard: any run of bytes, possibly empty,
  within one component; it never matches ``/``. There is no way to single
  out a literal ``*`` in a name: ``%2A`` decodes to the wildcard too (which
  matches the literal ``*`` among others).
* A last component ``**`` matches the directory before it and everything
  below it; ``/**`` alone matches the whole mount, root included. ``/`` alone
  is the mount root itself.
* Refused, so that a pattern always says literally what it grants rather
  than being normalised into something else: a pattern not starting with
  ``/``; an empty component (``//``); a trailing ``/`` (write ``/**``);
  ``.`` or ``..`` components; NUL bytes; an encoded ``/`` (``%2F``, which
  would let one pattern component span two path components); ``**`` other
  than as the whole last component; a broken ``%`` escape; control
  characters not percent-encoded; characters with no UTF-8 form.

Paths given to the matcher are canonical absolute byte paths inside the
mount (``b"/docs/a.txt"``, the root is ``b"/"``), as the fs layer produces
them. A path that is not canonical (relative, ``//``, a trailing ``/``, ``.``
or ``..`` components, NUL) matches nothing, as a second line of defence.

``Grants`` objects are immutable and safe to share; their checks run on every
FUSE request, so patterns are split into components once, at construction.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Action",
    "Grant",
    "Grants",
    "InvalidPatternError",
    "format_pattern",
    "parse_pattern",
    "parse_scope",
]

_HEX = frozenset(string.hexdigits)
_REASON_ITEM_CHARS = 80

# Bytes a scope token may carry as themselves (RFC 6749 section 3.3 allows
# %x21 / %x23-5B / %x5D-7E); '%' is our escape character, so it is encoded too.
_PLAIN = frozenset(range(0x21, 0x7F)) - {ord('"'), ord("\\"), ord("%")}

# A compiled component: literal bytes, or the pieces around each '*'.
_Component = bytes | tuple[bytes, ...]


class Action(enum.Enum):
    """What a grant allows; ``WRITE`` implies ``READ``."""

    READ = "read"
    WRITE = "write"


class InvalidPatternError(ValueError):
    """A pattern breaks one of the rules in the module docstring."""


@dataclass(frozen=True)
class Grant:
    """One ``ACTION:PATTERN`` item, with the pattern decoded into bytes.

    Raises:
        InvalidPatternError: ``pattern`` breaks a rule of the module docstring.
    """

    action: Action
    pattern: bytes

    def __post_init__(self) -> None:
        reason = _check_pattern(self.pattern)
        if reason is not None:
            raise InvalidPatternError(reason)

    def to_scope_item(self) -> str:
        """Return the item as it is written in a ``scope`` claim."""
        return f"{self.action.value}:{format_pattern(self.pattern)}"


def parse_pattern(text: str) -> bytes:
    """Decode the pattern ``text`` of a scope item into the bytes it matches.

    Raises:
        InvalidPatternError: the pattern is invalid; the message says why.
    """
    if not text.startswith("/"):
        raise InvalidPatternError(
            "a pattern must be an absolute path starting with '/'"
        )
    if "%2f" in text.lower():
        raise InvalidPatternError("an encoded '/' (%2F) is not allowed")
    chunks = text.split("%")
    out = [_plain_bytes(chunks[0])]
    for chunk in chunks[1:]:
        digits = chunk[:2]
        if len(digits) != 2 or not _HEX.issuperset(digits):
            raise InvalidPatternError("'%' must be followed by two hex digits")
        out.append(bytes([int(digits, 16)]))
        out.append(_plain_bytes(chunk[2:]))
    pattern = b"".join(out)
    reason = _check_pattern(pattern)
    if reason is not None:
        raise InvalidPatternError(reason)
    return pattern


def format_pattern(pattern: bytes) -> str:
    """Return ``pattern`` percent-encoded as a scope item carries it.

    Printable ASCII stays as it is; spaces, control bytes, non-ASCII bytes,
    ``%``, ``"`` and backslash become ``%XX``, so the result is a valid
    OAuth scope token and ``parse_pattern`` gives back the same bytes.
    """
    return "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in pattern)


def parse_scope(scope: str) -> tuple[tuple[Grant, ...], tuple[str, ...]]:
    """Split a ``scope`` claim into grants and the reasons items were ignored.

    Items are separated by spaces (RFC 6749 section 3.3). The grants keep the
    order of the claim, without duplicates.
    """
    grants: dict[Grant, None] = {}
    rejected: list[str] = []
    for item in scope.split(" "):
        if not item:
            continue
        action_text, colon, pattern_text = item.partition(":")
        if not colon:
            rejected.append(f"{_show(item)}: not of the form ACTION:PATTERN")
            continue
        try:
            action = Action(action_text)
        except ValueError:
            rejected.append(f"{_show(item)}: unknown action (use read or write)")
            continue
        try:
            grants[Grant(action, parse_pattern(pattern_text))] = None
        except InvalidPatternError as err:
            rejected.append(f"{_show(item)}: {err}")
    return tuple(grants), tuple(rejected)


class _Pattern:
    """A pattern split into components once, for fast matching."""

    __slots__ = ("parts", "recursive")

    def __init__(self, pattern: bytes) -> None:
        names = [] if pattern == b"/" else pattern[1:].split(b"/")
        self.recursive = bool(names) and names[-1] == b"**"
        if self.recursive:
            names.pop()
        self.parts: tuple[_Component, ...] = tuple(
            tuple(name.split(b"*")) if b"*" in name else name for name in names
        )

    def matches(self, names: list[bytes]) -> bool:
        """Whether the pattern matches the path made of ``names``."""
        if len(names) != len(self.parts) and not (
            self.recursive and len(names) > len(self.parts)
        ):
            return False
        return all(map(_match_component, self.parts, names))

    def reaches(self, names: list[bytes]) -> bool:
        """Whether the pattern matches the directory ``names`` or a path below it."""
        if len(names) > len(self.parts) and not self.recursive:
            return False
        return all(map(_match_component, self.parts, names))


class Grants:
    """What a set of tokens allows, as the union of their grants.

    Immutable. A write grant covers reading too, so a read grant on a pattern
    that also has a write grant is dropped: two ``Grants`` that allow the
    same things by the same patterns compare equal.
    """

    __slots__ = ("_grants", "_read", "_write")

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        given = set(grants)
        written = {g.pattern for g in given if g.action is Action.WRITE}
        self._grants = frozenset(
            g for g in given if g.action is Action.WRITE or g.pattern not in written
        )
        compiled = {g.pattern: _Pattern(g.pattern) for g in self._grants}
        self._read = _PatternSet(compiled.values())
        self._write = _PatternSet(compiled[p] for p in written)

    @classmethod
    def empty(cls) -> Grants:
        """Return grants that allow nothing."""
        return _EMPTY

    @classmethod
    def union(cls, sets: Iterable[Grants]) -> Grants:
        """Return grants that allow what any of ``sets`` allows."""
        return cls(g for s in sets for g in s._grants)

    def __or__(self, other: Grants) -> Grants:
        return Grants.union((self, other))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grants):
            return NotImplemented
        return self._grants == other._grants

    def __hash__(self) -> int:
        return hash(self._grants)

    def __repr__(self) -> str:
        return f"Grants({' '.join(g.to_scope_item() for g in self.items)})"

    @property
    def items(self) -> tuple[Grant, ...]:
        """The grants, sorted by pattern, write before read."""
        return tuple(sorted(self._grants, key=lambda g: (g.pattern, g.action.value)))

    @property
    def is_empty(self) -> bool:
        """Whether these grants allow nothing at all."""
        return not self._grants

    def can_read(self, path: bytes) -> bool:
        """Whether ``path`` (a file, or a directory's own entry) may be read."""
        names = _split_path(path)
        return names is not None and self._read.any_matches(names)

    def can_write(self, path: bytes) -> bool:
        """Whether ``path`` may be created, changed or removed."""
        names = _split_path(path)
        return names is not None and self._write.any_matches(names)

    def can_list(self, dir_path: bytes) -> bool:
        """Whether any grant could match the directory or something below it."""
        names = _split_path(dir_path)
        return names is not None and self._read.any_reaches(names)

    def reaches(self, path: bytes, is_dir: bool) -> bool:
        """Whether ``path`` is visible to lookup and stat.

        A file needs a read or write grant on itself. A directory needs a
        grant on itself or on something below it, since it must be walked
        through to reach what lies below.
        """
        return self.can_list(path) if is_dir else self.can_read(path)

    def describe(self) -> list[str]:
        """Return the grants in words, one line each, for ``token inspect``."""
        return [_describe(g) for g in self.items]


class _PatternSet:
    """Compiled patterns with a shortcut for ``/**``, the most common grant."""

    __slots__ = ("_everything", "_patterns")

    def __init__(self, patterns: Iterable[_Pattern]) -> None:
        self._patterns = tuple(patterns)
        self._everything = any(p.recursive and not p.parts for p in self._patterns)

    def any_matches(self, names: list[bytes]) -> bool:
        return self._everything or any(p.matches(names) for p in self._patterns)

    def any_reaches(self, names: list[bytes]) -> bool:
        return self._everything or any(p.reaches(names) for p in self._patterns)


_EMPTY = Grants()


def _match_component(part: _Component, name: bytes) -> bool:
    if isinstance(part, bytes):
        return part == name
    first, last = part[0], part[-1]
    end = len(name) - len(last)
    if end < len(first) or not name.startswith(first) or not name.endswith(last):
        return False
    # Leftmost matching of each middle piece is enough: '*' is the only
    # wildcard, so an earlier match never rules out a later one.
    pos = len(first)
    for piece in part[1:-1]:
        found = name.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _split_path(path: bytes) -> list[bytes] | None:
    """Split a canonical path into names; None when it is not canonical."""
    if path == b"/":
        return []
    if not path.startswith(b"/") or path.endswith(b"/") or b"\0" in path:
        return None
    names = path[1:].split(b"/")
    if b"" in names or b"." in names or b".." in names:
        return None
    return names


def _check_pattern(pattern: bytes) -> str | None:
    """Return why the decoded ``pattern`` is invalid, or None when it is fine."""
    if not pattern.startswith(b"/"):
        return "a pattern must be an absolute path starting with '/'"
    if b"\0" in pattern:
        return "NUL bytes are not allowed"
    if pattern == b"/":
        return None
    names = pattern[1:].split(b"/")
    if names[-1] == b"":
        return "a trailing '/' is not allowed (end with '/**' for a whole directory)"
    if b"" in names:
        return "empty components ('//') are not allowed"
    if b"." in names or b".." in names:
        return "'.' and '..' components are not allowed"
    if any(b"**" in name for name in names[:-1]) or (
        b"**" in names[-1] and names[-1] != b"**"
    ):
        return "'**' is only allowed as the whole last component ('/**')"
    return None


def _plain_bytes(text: str) -> bytes:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidPatternError("control characters must be percent-encoded")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPatternError("the pattern is not valid Unicode") from None


def _show(item: str) -> str:
    """Quote a scope item for a reason: escaped, and cut short if long."""
    shown = item if len(item) <= _REASON_ITEM_CHARS else item[:_REASON_ITEM_CHARS] + "…"
    return ascii(shown) if not shown.isprintable() else repr(shown)


def _human(pattern: bytes) -> str:
    text = pattern.decode("utf-8", "backslashreplace")
    return text if text.isprintable() else ascii(text)


def _describe(grant: Grant) -> str:
    verb = "read and write" if grant.action is Action.WRITE else "read"
    shown = _human(grant.pattern)
    if grant.pattern == b"/**":
        return f"{verb} everything (the whole mount)"
    if grant.pattern == b"/":
        return f"{verb} / (the mount root itself, nothing below it)"
    wild = "; '*' stands for any run of characters within one name"
    if grant.pattern.endswith(b"/**"):
        base = grant.pattern[:-3]
        if b"*" in base:
            what = f"every directory matching {_human(base)} and everything below it"
            return f"{verb} {shown} ({what}{wild})"
        return f"{verb} {shown} (the directory {_human(base)} and everything below it)"
    if b"*" in grant.pattern:
        return f"{verb} {shown} (the paths matching it{wild})"
    return f"{verb} {shown} (this path only)"
