"""Token file and environment sources (jwtfs.auth.sources)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from jwtfs.auth.issuing import issue_token
from jwtfs.auth.scope import Action, Grant, Grants
from jwtfs.auth.sources import TokenSource, check_token_file
from jwtfs.auth.tokens import Verifier, format_time, token_fingerprint
from jwtfs.config import AuthConfig
from jwtfs.errors import ConfigError

KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
AUD = "jwtfs:test"
LEEWAY = 30
LOGGER = "jwtfs.auth.sources"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mint(
    read: Sequence[str] = ("/**",),
    *,
    sub: str | None = "alice",
    now: float | None = None,
    ttl: int = 600,
) -> str:
    return issue_token(
        (KEYS / "ed25519.private.pem").read_bytes(),
        audience=AUD,
        read=read,
        write=(),
        ttl_seconds=ttl,
        sub=sub,
        issuer=None,
        now=now,
    )


def make_verifier(
    clock: Clock | None = None, *, revocation_file: Path | None = None
) -> Verifier:
    cfg = AuthConfig(
        audience=AUD,
        key_files=(KEYS / "ed25519.public.pem",),
        leeway=LEEWAY,
        revocation_file=revocation_file,
    )
    return Verifier(cfg, clock=clock or time.time)


def reads(*patterns: str) -> Grants:
    return Grants(Grant(Action.READ, p.encode()) for p in patterns)


def replace(path: Path, text: str) -> None:
    """Write ``text`` to a new file and rename it over ``path``, as editors do."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# --- check_token_file ---


def test_check_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    with pytest.raises(ConfigError) as caught:
        check_token_file(path)
    assert str(caught.value) == (
        f"{path}: token file not found; create it with "
        f"'jwtfs token issue ... > {path}' or drop --token-file"
    )


def test_check_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo):
        with pytest.raises(
            ConfigError, match=f"^{path}: the token file is not a regular"
        ):
            check_token_file(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_check_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_text(mint())
    path.chmod(0)
    with pytest.raises(
        ConfigError, match="cannot read the token file: Permission denied"
    ):
        check_token_file(path)


def test_check_names_the_line_that_is_not_a_jwt(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_text(f"# for alice\n\n  {mint()}  \nBearer {mint()}\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        check_token_file(path)
    assert str(caught.value) == (
        f"{path}: line 4 is not a JWT (three base64url parts separated by '.'); "
        "one token a line, '#' starts a comment"
    )
    assert "Bearer" not in str(caught.value)


def test_check_accepts_good_files_and_warns_about_open_modes(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_text(f"# two tokens\n{mint()}\n{mint()}\n")
    path.chmod(0o600)
    assert check_token_file(path) == []
    path.chmod(0o644)
    assert check_token_file(path) == [
        f"{path}: mode 0644 lets other users see or change the tokens; "
        f"run chmod 600 {path}"
    ]


def test_check_warns_about_a_file_without_tokens(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_text("# nothing yet\n\n")
    path.chmod(0o600)
    assert check_token_file(path) == [
        f"{path}: holds no tokens; every access is refused until one is added"
    ]


def test_check_refuses_huge_and_binary_files(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="the token file is larger than 1 MiB"):
        check_token_file(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="the token file is not UTF-8 text"):
        check_token_file(path)


# --- TokenSource: loading ---


def test_file_and_environment_tokens_are_unioned(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_text(f"{mint(['/file/**'], sub='bob')}\n")
    source = TokenSource(make_verifier(), path, mint(["/env/**"]) + "\n")
    assert source.grants() == reads("/file/**", "/env/**")
    assert source.subjects == ("alice", "bob")
    assert source.has_valid_token()


def test_the_same_token_twice_counts_once(tmp_path: Path) -> None:
    token = mint()
    path = tmp_path / "t.jwt"
    path.write_text(f"{token}\n{token}\n")
    source = TokenSource(make_verifier(), path, token)
    assert source.fingerprints == (token_fingerprint(token),)


def test_no_source_at_all_grants_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    source = TokenSource(make_verifier(), None, None)
    assert source.grants() == Grants.empty()
    assert not source.has_valid_token()
    assert source.next_deadline() is None
    source.deny(b"/x", "read")
    assert messages(caplog) == [
        "access denied: read /x (no valid token: no --token-file given "
        "and JWTFS_TOKEN is not set)"
    ]


def test_a_renamed_over_file_is_reloaded_by_one_refresh(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_text(mint(["/old/**"]))
    source = TokenSource(make_verifier(), path, None)
    assert source.grants() == reads("/old/**")
    assert source.refresh() is False

    replace(path, mint(["/new/**"]))
    assert source.refresh() is True
    assert source.grants() == reads("/new/**")
    assert source.refresh() is False


def test_an_in_place_rewrite_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_text(mint(["/a/**"]))
    source = TokenSource(make_verifier(), path, None)
    with path.open("w") as f:
        f.write(f"# now two\n{mint(['/a/**'])}\n{mint(['/b/**'])}\n")
    assert source.refresh() is True
    assert source.grants() == reads("/a/**", "/b/**")


def test_a_symlink_swap_is_followed(tmp_path: Path) -> None:
    first, second = tmp_path / "first.jwt", tmp_path / "second.jwt"
    first.write_text(mint(["/first/**"]))
    second.write_text(mint(["/second/**"]))
    link = tmp_path / "t.jwt"
    link.symlink_to(first)
    source = TokenSource(make_verifier(), link, None)
    assert source.grants() == reads("/first/**")

    staged = tmp_path / "staged"
    staged.symlink_to(second)
    os.replace(staged, link)
    assert source.refresh() is True
    assert source.grants() == reads("/second/**")


def test_deleting_the_file_drops_its_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "t.jwt"
    path.write_text(mint())
    source = TokenSource(make_verifier(), path, None)
    path.unlink()
    assert source.refresh() is True
    assert source.grants() == Grants.empty()
    caplog.clear()
    source.deny(b"/a", "read")
    assert messages(caplog) == [
        f"access denied: read /a (no valid token: {path}: token file not found; "
        f"create it with 'jwtfs token issue ... > {path}' or drop --token-file)"
    ]


def test_a_fifo_in_place_of_the_file_does_not_hang(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    os.mkfifo(path)
    source = TokenSource(make_verifier(), path, mint(["/env/**"]))
    assert source.grants() == reads("/env/**")


def test_an_oversized_file_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "t.jwt"
    path.write_text(mint() + "\n" + "#" * (1024 * 1024))
    source = TokenSource(make_verifier(), path, None)
    assert source.grants() == Grants.empty()


# --- TokenSource: time ---


def test_expiry_drops_grants_without_a_refresh() -> None:
    clock = Clock(2_000_000_000.0)
    source = TokenSource(
        make_verifier(clock), None, mint(["/a/**"], now=clock.now, ttl=10)
    )
    assert source.next_deadline() == clock.now + 10 + LEEWAY
    assert source.refresh() is False

    clock.now += 10 + LEEWAY - 0.5
    assert source.grants() == reads("/a/**")
    clock.now += 0.5
    assert source.grants() == Grants.empty()
    assert not source.has_valid_token()
    assert source.next_deadline() is None
    assert source.refresh() is True
    assert source.refresh() is False


def test_expiry_keeps_the_other_tokens(tmp_path: Path) -> None:
    clock = Clock(2_000_000_000.0)
    path = tmp_path / "t.jwt"
    short, long = mint(["/s/**"], now=clock.now, ttl=10), mint(["/l/**"], now=clock.now)
    path.write_text(f"{short}\n{long}\n")
    source = TokenSource(make_verifier(clock), path, None)
    clock.now += 10 + LEEWAY
    assert source.grants() == reads("/l/**")
    assert source.next_deadline() == clock.now - 10 - LEEWAY + 600 + LEEWAY


def test_a_token_not_yet_valid_starts_counting_at_its_nbf() -> None:
    clock = Clock(2_000_000_000.0)
    token = mint(["/later/**"], now=clock.now + 100)
    source = TokenSource(make_verifier(clock), None, token)
    assert source.grants() == Grants.empty()
    assert source.next_deadline() == clock.now + 100 - LEEWAY

    clock.now += 100 - LEEWAY - 1
    assert source.refresh() is False
    clock.now += 1
    assert source.refresh() is True
    assert source.grants() == reads("/later/**")
    assert source.next_deadline() == clock.now + LEEWAY + 600 + LEEWAY


def test_a_revocation_takes_effect_at_the_next_refresh(tmp_path: Path) -> None:
    revoked = tmp_path / "revoked"
    revoked.write_text("")
    verifier = make_verifier(revocation_file=revoked)
    token = mint()
    source = TokenSource(verifier, None, token)
    assert source.has_valid_token()

    revoked.write_text(f"# leaked\n{verifier.verify(token).jti}\n")
    assert source.refresh() is True
    assert source.grants() == Grants.empty()
    assert verifier.generation == 1
    assert source.refresh() is False
    assert verifier.generation == 1


def test_an_explicit_key_reload_is_seen_too(tmp_path: Path) -> None:
    revoked = tmp_path / "revoked"
    revoked.write_text("")
    verifier = make_verifier(revocation_file=revoked)
    token = mint()
    source = TokenSource(verifier, None, token)
    verified = verifier.verify(token)
    revoked.write_text(f"{verified.jti}\n")
    verifier.reload_keys()
    assert source.refresh() is True
    assert source.grants() == Grants.empty()


def test_a_broken_key_file_keeps_the_old_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "signing.pub"
    key_file.write_bytes((KEYS / "ed25519.public.pem").read_bytes())
    cfg = AuthConfig(audience=AUD, key_files=(key_file,), leeway=LEEWAY)
    source = TokenSource(Verifier(cfg), None, mint())
    key_file.write_bytes(b"half-written")
    assert source.refresh() is False
    assert source.has_valid_token()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"keys not reloaded, the previous ones stay in use: {key_file}: "
            "not a PEM, DER or OpenSSH public key",
        )
    ]


# --- TokenSource: logging ---


def test_denials_name_reason_sub_and_fingerprint_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock(2_000_000_000.0)
    token = mint(["/docs/**"], now=clock.now)
    fp = token_fingerprint(token)
    source = TokenSource(make_verifier(clock), None, token)
    caplog.clear()

    source.deny(b"/src/x", "read")
    source.deny(b"/src/x", "read")
    clock.now += 59
    source.deny(b"/src/x", "read")
    source.deny(b"/src/x", "write")
    source.deny(b"/src/y", "read")
    clock.now += 1
    source.deny(b"/src/x", "read")
    line = f"access denied: read /src/x (token sub=alice fp={fp}: path outside scope)"
    assert messages(caplog) == [
        line,
        f"access denied: write /src/x (token sub=alice fp={fp}: path outside scope)",
        f"access denied: read /src/y (token sub=alice fp={fp}: path outside scope)",
        line,
    ]


def test_a_denial_storm_is_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock(2_000_000_000.0)
    source = TokenSource(make_verifier(clock), None, None)
    caplog.clear()
    for n in range(150):
        source.deny(f"/f{n}".encode(), "read")
    clock.now += 60
    source.refresh()
    logged = messages(caplog)
    assert len(logged) == 101
    assert logged[-1] == (
        "access denied 50 more times in the last 60 s (not logged one by one)"
    )


def test_denial_after_expiry_says_when(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock(2_000_000_000.0)
    token = mint(["/a/**"], now=clock.now, ttl=10)
    fp = token_fingerprint(token)
    source = TokenSource(make_verifier(clock), None, token)
    clock.now += 10 + LEEWAY
    caplog.clear()
    source.deny(b"/a/b", "read")
    expired = format_time(2_000_000_010)
    assert messages(caplog) == [
        f"token sub=alice fp={fp}: expired at {expired}",
        f"access denied: read /a/b (no valid token: sub=alice fp={fp}: "
        f"expired at {expired})",
    ]


def test_each_refused_token_is_logged_once_per_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    old = mint(now=time.time() - 10_000, ttl=60)
    path = tmp_path / "t.jwt"
    path.write_text(f"{old}\n")
    source = TokenSource(make_verifier(), path, None)
    fp = token_fingerprint(old)
    refused = f"token refused ({path} line 1, sub=alice fp={fp}): expired at "
    assert sum(m.startswith(refused) for m in messages(caplog)) == 1

    source.refresh()
    replace(path, f"{mint(['/b/**'])}\n{old}\n")
    source.refresh()
    assert sum(m.startswith("token refused") for m in messages(caplog)) == 1
    assert source.grants() == reads("/b/**")


def test_forged_tokens_are_named_by_fingerprint_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    header, body, _ = mint(sub="root").split(".")
    forged = f"{header}.{body}.{'A' * 86}"
    TokenSource(make_verifier(), None, forged)
    assert messages(caplog) == [
        f"token refused (JWTFS_TOKEN, fp={token_fingerprint(forged)}): bad signature"
    ]


def test_logs_never_hold_a_token_and_escape_odd_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = mint(["/docs/**"], sub="eve\nINFO forged line")
    path = tmp_path / "t.jwt"
    path.write_text(f"{token}\n{mint(now=0)}\n")
    source = TokenSource(make_verifier(), path, token)
    source.deny(b"/x\n\xff", "read")
    text = "\n".join(messages(caplog))
    for part in token.split("."):
        assert part not in text
    assert "\nINFO forged line" not in text
    assert "'/x\\n\\\\xff'" in text
    assert "sub='eve\\nINFO forged line'" in text
