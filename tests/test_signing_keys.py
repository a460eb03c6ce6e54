"""Signing keys: a weak or damaged key stops start-up with one line, check-config says so,
only ``serve`` and ``keys generate`` ever make a key, and a made key file is whole and 0600."""

from __future__ import annotations

import base64
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RcMta
from mailclient import reply_message, send_smtp

from rc_mta.tokens import new_secret, secret_weakness


def _serve_until_it_exits(rc: RcMta) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` expecting it to refuse; one that starts instead is stopped and fails the test."""
    rc.write_config()
    try:
        return subprocess.run(
            [sys.executable, "-m", "rc_mta", "--config", str(rc.config_path), "serve"],
            cwd=rc.workdir,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("serve started (it ran for 20 s) instead of refusing the key")


def _use_generated_key(rc: RcMta, path: Path) -> None:
    rc.settings["signing"] = {"generated_key_file": str(path), "request_ttl": "1d"}


def _assert_one_line_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (secrets.token_hex(16), "secret is 16 bytes (32 hex digits); at least 32 are needed"),
        ("short-secret", "secret is 9 bytes (12 base64 characters); at least 32 are needed"),
        ("a" * 64, "secret has only 1 different characters"),
        ("changeme" * 8, "secret has only 7 different characters"),
        ("0123456789abcdef" * 4, "secret is one short piece repeated"),
    ],
    ids=["16-random-bytes", "short", "one-character", "changeme", "repeated-pattern"],
)
def test_serve_refuses_a_weak_configured_key_in_one_line(fresh_rc: RcMta, secret: str, why: str) -> None:
    fresh_rc.settings["signing"].update(keys={1: secret}, active_key=1)

    result = _serve_until_it_exits(fresh_rc)

    _assert_one_line_refusal(result, f"config key signing.keys.1: {why}", "rc-mta keys generate --print")
    assert secret not in result.stderr


@pytest.mark.parametrize("content", [b"", b"\n", b"abc\n"], ids=["empty", "blank", "few-bytes"])
def test_serve_refuses_a_damaged_generated_key_file_and_keeps_it(fresh_rc: RcMta, content: bytes) -> None:
    key_file = fresh_rc.workdir / "var" / "signing.key"
    key_file.parent.mkdir()
    key_file.write_bytes(content)
    _use_generated_key(fresh_rc, key_file)

    result = _serve_until_it_exits(fresh_rc)

    _assert_one_line_refusal(result, f"signing key file {key_file}: secret is", "rc-mta keys generate")
    assert key_file.read_bytes() == content  # never silently replaced: that voids every request sent


def test_check_config_names_a_weak_configured_key(fresh_rc: RcMta) -> None:
    fresh_rc.settings["signing"].update(keys={1: secrets.token_hex(32), 7: secrets.token_hex(16)}, active_key=1)
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False)

    assert result.returncode != 0
    assert "✗ signing key: config key signing.keys.7: secret is 16 bytes" in result.stdout


def test_check_config_names_an_empty_generated_key_file(fresh_rc: RcMta) -> None:
    key_file = fresh_rc.workdir / "signing.key"
    key_file.write_bytes(b"")
    _use_generated_key(fresh_rc, key_file)
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False)

    assert result.returncode != 0
    assert f"✗ signing key: signing key file {key_file}: secret is 0 bytes" in result.stdout


def test_check_config_accepts_strong_keys(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False)

    assert "✓ signing key: 1 configured, active key 1" in result.stdout


def test_read_only_commands_never_make_a_signing_key(fresh_rc: RcMta, tmp_path: Path) -> None:
    key_file = fresh_rc.workdir / "var" / "signing.key"
    _use_generated_key(fresh_rc, key_file)
    fresh_rc.write_config()
    saved = tmp_path / "reply.eml"
    saved.write_bytes(bytes(reply_message("rc@reply.example.test", "ok")))

    listed = fresh_rc.cli("task", "list")
    task_id = fresh_rc.add_task()
    shown = fresh_rc.cli("task", "show", task_id)
    checked = fresh_rc.cli("check-config", check=False)
    diagnosed = fresh_rc.cli("diagnose", str(saved), check=False)
    requested = fresh_rc.cli("request", task_id, check=False)

    assert not key_file.exists()
    assert (listed.returncode, shown.returncode) == (0, 0)
    assert f"✓ signing key: {key_file} does not exist yet; rc-mta serve creates it" in checked.stdout
    for result in (diagnosed, requested):
        _assert_one_line_refusal(result, f"no signing key yet: {key_file} does not exist", "rc-mta keys generate")
    assert fresh_rc.task(task_id)["status"] == "in_progress"


def test_serve_makes_a_private_key_file_that_signs_requests(fresh_rc: RcMta) -> None:
    key_file = fresh_rc.workdir / "var" / "signing.key"
    _use_generated_key(fresh_rc, key_file)
    fresh_rc.start()

    mode = stat.S_IMODE(key_file.stat().st_mode)
    task_id = fresh_rc.add_task()
    address = fresh_rc.request(task_id)["complete_address"]
    outcome = send_smtp(fresh_rc.smtp_port, reply_message(address, "ok"), address)

    assert mode == 0o600
    assert secret_weakness(key_file.read_text().strip()) is None
    assert not list(key_file.parent.glob(".signing.key.*"))  # no temporary file left
    assert outcome.code == 250
    assert fresh_rc.task(task_id)["status"] == "completed"


def test_keys_generate_writes_a_private_key_file_once(fresh_rc: RcMta) -> None:
    key_file = fresh_rc.workdir / "keys" / "signing.key"
    _use_generated_key(fresh_rc, key_file)
    fresh_rc.write_config()

    made = fresh_rc.cli("keys", "generate")
    first = key_file.read_text()
    again = fresh_rc.cli("keys", "generate", check=False)

    assert made.returncode == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert secret_weakness(first.strip()) is None
    _assert_one_line_refusal(again, f"{key_file} already holds a signing key")
    assert key_file.read_text() == first


def test_keys_generate_replaces_a_damaged_key_file_and_serve_starts(fresh_rc: RcMta) -> None:
    key_file = fresh_rc.workdir / "signing.key"
    key_file.write_bytes(b"")
    _use_generated_key(fresh_rc, key_file)
    fresh_rc.write_config()

    fresh_rc.cli("keys", "generate")
    fresh_rc.start()

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert secret_weakness(key_file.read_text().strip()) is None
    assert fresh_rc.request(fresh_rc.add_task())["complete_address"]


def test_keys_generate_print_gives_a_secret_serve_accepts(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()
    printed = fresh_rc.cli("keys", "generate", "--print").stdout.strip()
    fresh_rc.settings["signing"].update(keys={3: printed}, active_key=3)

    fresh_rc.start()

    token = fresh_rc.request(fresh_rc.add_task())["complete_address"].split("+", 1)[1].split("@", 1)[0]
    assert base64.b32decode(token.upper())[1] == 3  # signed with the printed key


@pytest.mark.parametrize(
    "secret",
    [
        secrets.token_hex(32),  # openssl rand -hex 32
        base64.b64encode(secrets.token_bytes(32)).decode(),  # openssl rand -base64 32
        secrets.token_urlsafe(32),
        new_secret(),  # rc-mta keys generate
        "correct horse battery staple, then a lemon and two owls",  # a long passphrase
    ],
    ids=["hex", "base64", "base64url", "keys-generate", "passphrase"],
)
def test_secrets_made_the_documented_ways_are_strong_enough(secret: str) -> None:
    assert secret_weakness(secret) is None
