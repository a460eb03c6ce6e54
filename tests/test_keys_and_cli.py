"""Key rotation, configuration errors, and the CLI's promises (one-line errors, JSON)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPLY_DOMAIN, ROOT, RcMta
from dnsserver import NsdServer
from mailclient import reply_message, send_smtp
from pydantic import ValidationError

import rc_mta
from rc_mta.config import ReleaseConfig, load_settings


def _key_id(address: str) -> int:
    token = address.split("+", 1)[1].split("@", 1)[0]
    return base64.b32decode(token.upper())[1]


def test_rotated_key_still_verifies_old_requests_and_new_key_signs(fresh_rc: RcMta) -> None:
    old_secret, new_secret = secrets.token_hex(32), secrets.token_hex(32)
    fresh_rc.settings["signing"].update(keys={1: old_secret}, active_key=1)
    fresh_rc.start()
    old_task = fresh_rc.add_task()
    old_request = fresh_rc.request(old_task)
    assert _key_id(old_request["complete_address"]) == 1

    fresh_rc.settings["signing"].update(keys={1: old_secret, 2: new_secret}, active_key=2)
    fresh_rc.restart()
    new_task = fresh_rc.add_task()
    new_request = fresh_rc.request(new_task)

    assert _key_id(new_request["complete_address"]) == 2
    for task_id, request in ((old_task, old_request), (new_task, new_request)):
        address = request["complete_address"]
        assert send_smtp(fresh_rc.smtp_port, reply_message(address, "ok"), address).code == 250
        assert fresh_rc.task(task_id)["status"] == "completed"


def test_retired_key_is_refused(fresh_rc: RcMta) -> None:
    fresh_rc.settings["signing"].update(keys={1: secrets.token_hex(32)}, active_key=1)
    fresh_rc.start()
    task_id = fresh_rc.add_task()
    address = fresh_rc.request(task_id)["complete_address"]
    fresh_rc.settings["signing"].update(keys={2: secrets.token_hex(32)}, active_key=2)
    fresh_rc.restart()

    outcome = send_smtp(fresh_rc.smtp_port, reply_message(address, "ok"), address)

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "no longer accepts" in outcome.text


def test_wrong_config_value_is_one_line_naming_the_key(fresh_rc: RcMta) -> None:
    fresh_rc.settings["inbound"]["listen"] = "not-an-address"
    fresh_rc.write_config()

    result = fresh_rc.cli("serve", check=False)

    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert "inbound.listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_is_refused(fresh_rc: RcMta) -> None:
    fresh_rc.settings["inbound"]["lisen"] = "127.0.0.1:25"
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False)

    assert result.returncode != 0
    assert "inbound.lisen: unknown key" in result.stderr


@pytest.mark.parametrize(
    ("tasks", "key", "said"),
    [
        ({"action_deadline": "6m"}, "tasks.action_deadline", "must be at most 300s, half the time after which"),
        (
            {"backend": "release", "action_deadline": "20s", "release": {"url": "http://127.0.0.1:9", "token": "t"}},
            "tasks",
            "action_deadline 20s leaves no time to read a Release task and then POST within [tasks.release]"
            " timeout 10s: make it at least 21s",
        ),
        ({"webhook": {"timeout": "6m"}}, "tasks.webhook.timeout", "a POST may take 360s, over the 300s one action"),
        (
            {"release": {"timeout": "1m", "retries": 5}},
            "tasks.release",
            "timeout 60s × 6 tries (retries + 1), with back-offs between, for the POST and each of the 7 reads",
        ),
        (  # its POSTs alone (3 × 100s) would fit: the reads of the task around them do not
            {"release": {"timeout": "100s", "retries": 2}},
            "tasks.release",
            "timeout 100s × 3 tries (retries + 1), with back-offs between, for the POST and each of the 4 reads"
            " of the task around it may take 1503s, over the 300s one action on a task may take (half the time"
            " after which an unfinished answer is taken for dead): lower timeout or retries",
        ),
    ],
)
def test_backend_settings_that_could_outlast_a_claim_are_refused_in_one_line(
    fresh_rc: RcMta, tasks: dict[str, object], key: str, said: str
) -> None:
    """An action must end well before its claim may be taken for dead: a deadline or a
    backend's own worst case (every try of every call, with back-offs) over half that age is
    refused at start."""
    fresh_rc.settings["tasks"] = tasks
    fresh_rc.write_config()

    result = fresh_rc.cli("serve", check=False)

    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"config key {key}: {said}" in result.stderr


def test_release_is_checked_with_the_reads_and_back_offs_around_its_post() -> None:
    """Release's worst case is its POST and the reads of the task around it, each with every
    retry and back-off: the shipped settings (10s, 2 retries) take at most 153s and load; a
    timeout of 19.8s reaches the 300s exactly and loads; 19.9s is refused, though its POSTs
    alone (59.7s) would fit."""
    assert load_settings(str(ROOT / "conf" / "rc-mta.toml")).tasks.release.worst_case() == 153.0
    assert ReleaseConfig(timeout=19.8, retries=2).worst_case() == 300.0
    with pytest.raises(ValidationError) as over:
        ReleaseConfig(timeout=19.9, retries=2)
    said = over.value.errors()[0]["msg"]
    assert "may take 301.5s, over the 300s one action" in said and said.endswith(": lower timeout or retries")


def test_environment_overrides_the_file(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False, env={"RC_MTA_STORE__URL": "mysql://nope"})

    assert result.returncode != 0
    assert "store.url" in result.stderr


def test_missing_task_is_a_one_line_error(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("request", "t-doesnotexist", check=False)

    assert result.returncode == 1
    assert result.stderr.strip() == "rc-mta: error: no task t-doesnotexist"


def test_request_show_is_always_the_word_and_request_task_still_asks(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()
    sent = fresh_rc.request(task_id)  # rc-mta request TASK_ID --json

    shown = fresh_rc.cli("request", "show", sent["request_id"]).stdout
    alone = fresh_rc.cli("request", "show", check=False)
    with_owner = fresh_rc.cli("request", "show", sent["request_id"], "--owner", "bob@example.com", check=False)

    assert shown.startswith(f"request {sent['request_id']} for task {task_id}: Approve deploy to prod\n")
    assert (alone.returncode, alone.stderr) == (
        1,
        "rc-mta: error: request show needs the request's id: rc-mta request show REQUEST_ID\n",
    )
    assert (with_owner.returncode, with_owner.stderr) == (
        1,
        "rc-mta: error: --owner is for sending a request; request show takes REQUEST_ID and --json\n",
    )
    assert [mail.stem for mail in (fresh_rc.workdir / "outbox").glob("*.eml")] == [sent["request_id"]]


def test_check_config_reports_each_part(fresh_rc: RcMta, dns_server: NsdServer) -> None:
    fresh_rc.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "2s"}
    fresh_rc.settings["inbound"]["reply_domain"] = "reply.good.test"
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config")

    assert "✓ store:" in result.stdout
    assert "✓ outbound outbox:" in result.stdout
    assert result.stdout.count("✗") == 0


def test_diagnose_judges_a_saved_reply_without_acting(fresh_rc: RcMta, tmp_path: Path) -> None:
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()
    request = fresh_rc.request(task_id)
    saved = tmp_path / "reply.eml"
    saved.write_bytes(bytes(reply_message(request["fail_address"], "Broken build\n\n-- \nAlice")))

    report = json.loads(fresh_rc.cli("diagnose", "--json", "--client-ip", "127.0.0.1", str(saved)).stdout)

    assert report["would"] == "fail"
    assert report["action"] == "fail"
    assert report["comment"] == "Broken build"
    assert report["token"]["valid"] is True
    assert report["token"]["task_id"] == task_id
    assert report["checks"]["owner"]["result"] == "pass"
    assert report["smtp_reply"].startswith("250 2.0.0")
    assert fresh_rc.task(task_id)["status"] == "in_progress"


def test_a_refused_answer_to_the_bare_address_still_names_its_request(fresh_rc: RcMta, tmp_path: Path) -> None:
    """The token was found (through In-Reply-To) and is good; only the words are unclear: the
    refusal must say so, not report the token invalid, and the log line must name the task."""
    fresh_rc.write_config()
    fresh_rc.start()
    task_id = fresh_rc.add_task()
    request = fresh_rc.request(task_id)
    bare = f"rc@{REPLY_DOMAIN}"
    unclear = reply_message(bare, "Let me check with the team first", in_reply_to=request["message_id"])
    saved = tmp_path / "reply.eml"
    saved.write_bytes(bytes(unclear))

    report = json.loads(fresh_rc.cli("diagnose", "--json", "--client-ip", "127.0.0.1", str(saved)).stdout)
    outcome = send_smtp(fresh_rc.smtp_port, unclear, bare)

    assert report["smtp_reply"].startswith("550 5.6.0 Could not tell whether to complete or fail"), report
    assert report["token"]["valid"] is True
    assert (report["token"]["request_id"], report["token"]["task_id"]) == (request["request_id"], task_id)
    assert report["checks"]["owner"]["result"] == "pass"
    assert (outcome.code, outcome.enhanced) == (550, "5.6.0")
    refused = [line for line in fresh_rc.log_path.read_text().splitlines() if "reply refuse" in line]
    assert refused and task_id in refused[-1] and request["request_id"] in refused[-1], refused
    assert fresh_rc.task(task_id)["status"] == "in_progress"


def test_diagnose_shows_why_a_forged_reply_would_be_refused(fresh_rc: RcMta, tmp_path: Path) -> None:
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()
    request = fresh_rc.request(task_id)
    saved = tmp_path / "forged.eml"
    saved.write_bytes(bytes(reply_message(request["complete_address"], "ok", sender="mallory@example.com")))

    report = json.loads(fresh_rc.cli("diagnose", "--json", "--client-ip", "127.0.0.1", str(saved)).stdout)

    assert report["would"] == "refuse"
    assert report["smtp_reply"].startswith("550 5.7.1")
    assert report["checks"]["owner"]["result"] == "fail"


def test_shipped_config_documents_exactly_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from rc_mta.config import DEFAULT_CONFIG_PATH, Settings, load_settings

    for name in [n for n in os.environ if n.startswith("RC_MTA_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)

    assert load_settings(str(DEFAULT_CONFIG_PATH)).model_dump() == Settings().model_dump()


def test_diagnose_names_a_damaged_reply_address(fresh_rc: RcMta, tmp_path: Path) -> None:
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()
    address = fresh_rc.request(task_id)["complete_address"]
    local, domain = address.split("@")
    forged = f"{local[:-1]}{'b' if local[-1] == 'a' else 'a'}@{domain}"
    saved = tmp_path / "forged-address.eml"
    saved.write_bytes(bytes(reply_message(forged, "ok")))

    report = json.loads(fresh_rc.cli("diagnose", "--json", "--client-ip", "127.0.0.1", str(saved)).stdout)

    assert report["token"] == {"address": forged, "valid": False, "error": report["smtp_reply"]}
    assert report["smtp_reply"].startswith("550 5.7.1")
    assert report["would"] == "refuse"


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rc_mta", "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, f"rc-mta {rc_mta.__version__}\n", "")
