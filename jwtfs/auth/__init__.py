"""Tokens and what they grant: the only package that imports ``jwt``.

``scope`` turns a token's ``scope`` claim into ``Grants`` and answers, per
path, whether it may be read, written, listed or seen. ``keyset`` loads the
keys tokens are verified with (``KeySet``), ``tokens`` verifies tokens
(``Verifier``), and ``issuing`` issues them and decodes them for display.
``sources`` holds the tokens of a mount, from the token file and
``JWTFS_TOKEN``, and logs each denial with its reason.
"""

from jwtfs.auth.issuing import (
    TokenReport,
    encode_pattern,
    inspect_token,
    issue_token,
    parse_duration,
)
from jwtfs.auth.keyset import KeySet
from jwtfs.auth.scope import Action, Grant, Grants, parse_scope
from jwtfs.auth.sources import TokenSource, check_token_file
from jwtfs.auth.tokens import VerifiedToken, Verifier

__all__ = [
    "Action",
    "Grant",
    "Grants",
    "KeySet",
    "TokenReport",
    "TokenSource",
    "VerifiedToken",
    "Verifier",
    "check_token_file",
    "encode_pattern",
    "inspect_token",
    "issue_token",
    "parse_duration",
    "parse_scope",
]
