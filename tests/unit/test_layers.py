"""The layering of DESIGN.md, checked on the source: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "jwtfs"

# Foreign libraries that only one layer may import.
OWNERS = {
    "pyfuse3": "fs",
    "jwt": "auth",
    "sqlite3": "vault/index.py",
    "cryptography": "crypto",
    "httpx": "remote",
}

# jwtfs layers and the jwtfs layers each must never import (nothing points up).
FORBIDDEN = {
    "blocks": {"cli", "daemon", "fs", "auth", "vault", "crypto", "remote"},
    "crypto": {"cli", "daemon", "fs", "auth", "vault", "blocks", "remote"},
    "remote": {"cli", "daemon", "fs", "auth", "vault", "crypto"},
    "auth": {"cli", "daemon", "fs", "vault", "blocks", "remote"},
    "vault": {"cli", "daemon", "fs", "auth"},
    "fs": {"cli", "daemon"},
    "daemon": {"cli"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_foreign_libraries_stay_in_their_layer(path: Path) -> None:
    relative = str(path.relative_to(PACKAGE))
    for name in imports_of(path):
        top = name.split(".")[0]
        owner = OWNERS.get(top)
        if owner is not None:
            assert relative.startswith(owner), f"{relative} imports {top}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_only_point_down(path: Path) -> None:
    forbidden = FORBIDDEN.get(layer_of(path), set())
    for name in imports_of(path):
        parts = name.split(".")
        if parts[0] == "jwtfs" and len(parts) > 1:
            assert parts[1] not in forbidden, f"{path.name} imports {name}"


def test_every_layer_is_checked() -> None:
    layers = {layer_of(p) for p in SOURCES} - {
        "__init__",
        "__main__",
        "errors",
        "config",
    }
    assert layers <= set(FORBIDDEN) | {"cli"}
