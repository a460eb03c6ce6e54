"""What a newcomer or an operator meets in the first hour: a command run in the wrong
directory, a misspelt environment variable, a request for a finished task, revoking by the
Message-ID the mail showed, and an unknown HTTP path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import RcMta
from mailclient import reply_message, send_smtp

API_TOKEN = "first-hour-api-token-0123456789abcdef"


def _rc_mta(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a person runs it: no --config, whatever directory they are in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RC_MTA_")}
    return subprocess.run(
        [sys.executable, "-m", "rc_mta", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


def test_a_command_run_away_from_its_config_says_so_and_creates_nothing(tmp_path: Path) -> None:
    result = _rc_mta("task", "list", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("rc-mta: error: no config file:"), result.stderr
    assert "--config" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no database, no signing key


def test_check_config_alone_may_run_on_the_defaults(tmp_path: Path) -> None:
    result = _rc_mta("check-config", cwd=tmp_path)

    assert "✓ config: defaults and environment parsed" in result.stdout
    assert "no config file" not in result.stderr


def test_a_config_named_by_the_environment_is_found_from_anywhere(fresh_rc: RcMta, tmp_path: Path) -> None:
    fresh_rc.write_config()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    result = _rc_mta("task", "list", "--json", cwd=elsewhere, env={"RC_MTA_CONFIG": str(fresh_rc.config_path)})

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_a_misspelt_environment_section_fails_naming_the_variable(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("task", "list", check=False, env={"RC_MTA_NOSECTION__KEY": "1"})

    assert result.returncode == 1
    expected = "rc-mta: error: environment variable RC_MTA_NOSECTION__KEY: no config section 'nosection'"
    assert result.stderr.strip() == expected


def test_one_underscore_between_section_and_key_gets_the_right_spelling(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("task", "list", check=False, env={"RC_MTA_LOG_LEVEL": "debug"})

    assert result.returncode == 1
    assert "RC_MTA_LOG__LEVEL" in result.stderr and "two underscores" in result.stderr


def test_a_bad_value_from_the_environment_blames_the_environment_not_the_file(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("task", "list", check=False, env={"RC_MTA_LOG__LEVEL": "loud"})

    assert result.returncode == 1
    assert result.stderr.startswith("rc-mta: error: environment variable RC_MTA_LOG__LEVEL: config key log.level:")
    assert str(fresh_rc.config_path) not in result.stderr


def test_variables_that_are_not_config_keys_are_left_alone(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("task", "list", env={"RC_MTA_API_TOKEN": "abc", "RC_MTA_TEST_PG": "x"})

    assert result.returncode == 0


def test_a_request_for_a_finished_task_is_refused_and_its_reply_address_never_exists(fresh_rc: RcMta) -> None:
    fresh_rc.settings["http"]["api_tokens"] = [API_TOKEN]
    fresh_rc.start()
    task_id = fresh_rc.add_task()
    address = fresh_rc.request(task_id)["complete_address"]
    assert send_smtp(fresh_rc.smtp_port, reply_message(address, "Looks good"), address).code == 250

    cli = fresh_rc.cli("request", task_id, check=False)
    api = _post_json(fresh_rc, "/v1/requests", {"task_id": task_id})

    assert cli.returncode == 1 and cli.stderr.strip() == f"rc-mta: error: task {task_id} is completed"
    status, body = api
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert body["error"]["message"] == f"task {task_id} is completed"
    assert len(list((fresh_rc.workdir / "outbox").glob("*.eml"))) == 1  # only the first request


def test_revoke_takes_the_message_id_and_refuses_an_answered_request(fresh_rc: RcMta) -> None:
    fresh_rc.start()
    open_task, answered_task = fresh_rc.add_task(), fresh_rc.add_task()
    open_request, answered_request = fresh_rc.request(open_task), fresh_rc.request(answered_task)
    address = answered_request["complete_address"]
    assert send_smtp(fresh_rc.smtp_port, reply_message(address, "ok"), address).code == 250

    revoked = fresh_rc.cli("revoke", open_request["message_id"].strip("<>"))
    answered = fresh_rc.cli("revoke", answered_request["request_id"], check=False)
    unknown = fresh_rc.cli("revoke", "<nobody@nowhere>", check=False)

    assert revoked.stdout.strip() == f"request {open_request['request_id']} revoked"
    late = open_request["complete_address"]
    assert send_smtp(fresh_rc.smtp_port, reply_message(late, "ok"), late).code == 550
    assert answered.returncode == 1
    assert answered.stderr.strip() == (
        f"rc-mta: error: request {answered_request['request_id']} was already answered: complete by alice@example.com"
    )
    assert unknown.returncode == 1 and "no request <nobody@nowhere>" in unknown.stderr


def test_an_unknown_http_path_answers_in_the_api_error_shape(rc: RcMta) -> None:
    status, body = _get_json(rc, "/")

    assert status == 404
    assert body["error"]["code"] == "not_found"


def _get_json(server: RcMta, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post_json(server: RcMta, path: str, body: dict[str, object]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        server.http_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
