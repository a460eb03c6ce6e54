"""What Prometheus and a load balancer see: a real rc-mta's /metrics after real SMTP traffic,
/healthz and /readyz (also while its database is gone), and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta, free_port, make_rc_mta, require_server
from mailclient import rcpt_reply, reply_message, send_smtp
from prometheus_client.parser import text_string_to_metric_families

from rc_mta import metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "conf" / "grafana" / "rc-mta.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(rc: RcMta) -> tuple[str, Samples]:
    status, body = get(rc.http_url + "/metrics")
    assert status == 200
    text = body.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def busy_rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcMta]:
    """A running rc-mta that has completed one task and refused three replies, each differently."""
    rc = make_rc_mta(tmp_path_factory.mktemp("rc-mta-metrics"))
    rc.start()
    try:
        task_id = rc.add_task()
        request = rc.request(task_id)
        good = send_smtp(rc.smtp_port, reply_message(request["complete_address"]), request["complete_address"])
        assert good.code == 250, good
        local, _, domain = request["fail_address"].partition("@")
        forged = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
        assert rcpt_reply(rc.smtp_port, forged).code == 550
        assert rcpt_reply(rc.smtp_port, "someone@elsewhere.example").code == 550
        other = rc.request(rc.add_task())
        unclear = send_smtp(rc.smtp_port, reply_message(other["reply_to"], "Let me think about it"), other["reply_to"])
        assert unclear.code == 550, unclear
        yield rc
    finally:
        rc.stop()


def test_refusals_are_counted_by_stage_and_reason(busy_rc: RcMta) -> None:
    _, samples = scrape(busy_rc)

    assert value(samples, "rc_mta_rejections_total", stage="rcpt", reason="token_invalid") == 1
    assert value(samples, "rc_mta_rejections_total", stage="rcpt", reason="not_our_domain") == 1
    assert value(samples, "rc_mta_rejections_total", stage="data", reason="action_unclear") == 1


def test_one_completion_is_counted_once_with_its_latency(busy_rc: RcMta) -> None:
    _, samples = scrape(busy_rc)

    assert value(samples, "rc_mta_tasks_acted_total", backend="embedded", action="complete") == 1
    assert value(samples, "rc_mta_tasks_acted_total", backend="embedded", action="fail") == 0
    assert value(samples, "rc_mta_messages_received_total", source="smtp") == 2
    assert value(samples, "rc_mta_reply_to_completion_seconds_count", source="smtp") == 1
    assert value(samples, "rc_mta_reply_to_completion_seconds_bucket", source="smtp", le="+Inf") == 1
    assert value(samples, "rc_mta_backend_request_seconds_count", backend="embedded", operation="complete") == 1
    assert value(samples, "rc_mta_connections_total", protocol="smtp") >= 4
    assert any(name == "rc_mta_build_info" for name, _ in samples)


def test_scrape_passes_promtool_check_metrics(busy_rc: RcMta) -> None:
    promtool = shutil.which("promtool")
    require_server(promtool is not None, "promtool (Debian package prometheus)")
    assert promtool is not None
    text, _ = scrape(busy_rc)

    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_healthz_answers_200_with_the_loop_lag(busy_rc: RcMta) -> None:
    status, body = get(busy_rc.http_url + "/healthz")

    report = json.loads(body)
    assert status == 200, report
    assert report["status"] == "ok"
    assert 0 <= report["loop_lag_seconds"] < 1


def test_readyz_answers_200_when_store_and_backend_answer(busy_rc: RcMta) -> None:
    status, body = get(busy_rc.http_url + "/readyz")

    report = json.loads(body)
    assert status == 200, report
    assert report == {"status": "ready", "listeners": True, "store": "ok", "backend": "ok"}


class TcpProxy:
    """A TCP relay to PostgreSQL that the test can cut, as when the database host goes away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def wait_for_status(url: str, expected: int, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status, body = 0, b""
    while time.monotonic() < deadline:
        status, body = get(url)
        if status == expected:
            report: dict[str, Any] = json.loads(body)
            return report
        time.sleep(0.2)
    raise AssertionError(f"{url} answered {status} {body!r}, not {expected}, within {timeout}s")


def test_readyz_answers_503_while_the_database_is_unreachable_and_recovers(tmp_path: Path, pg_url: str) -> None:
    port = urllib.parse.urlsplit(pg_url).port
    proxy = TcpProxy(("127.0.0.1", port or 5432))
    proxy.open()
    rc = make_rc_mta(tmp_path, store={"url": pg_url.replace(f":{port}/", f":{proxy.port}/", 1)})
    rc.start()
    try:
        wait_for_status(rc.http_url + "/readyz", 200)

        proxy.cut()
        down = wait_for_status(rc.http_url + "/readyz", 503)
        health_status, _ = get(rc.http_url + "/healthz")

        proxy.open()
        up = wait_for_status(rc.http_url + "/readyz", 200)
    finally:
        rc.stop()
        proxy.cut()
    assert down["status"] == "not ready"
    assert down["store"] != "ok" and "unavailable" in down["store"], down
    assert health_status == 200  # alive, only not ready: no restart wanted
    assert up["store"] == "ok"


# The Grafana dashboard ------------------------------------------------------------------------


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return exprs


def exported_series_names() -> set[str]:
    """Every series name the registry exposes, also for metrics not observed yet."""
    names: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"], "gauge": [""]}
    for family in metrics.REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_dashboard_uses_only_metrics_rc_mta_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for expr in dashboard_expressions() for name in re.findall(r"\brc_mta_[a-z0-9_]+", expr)}

    assert dashboard["schemaVersion"] >= 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert used, "the dashboard queries no rc-mta metric"
    assert used <= exported_series_names(), used - exported_series_names()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("refusals by reason", "completions", "reply to completion", "since last sync", "backend", "dns"):
        assert topic in titles


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    require_server(promtool is not None, "promtool (Debian package prometheus)")
    assert promtool is not None
    grafana_vars = {"$__rate_interval": "5m", "$__range": "6h", "$instance": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_expressions()):
        if expr.startswith("label_values("):
            continue
        for var, replacement in grafana_vars.items():
            expr = expr.replace(var, replacement)
        rules.append({"record": f"rc_mta:dashboard_query_{i}", "expr": expr})
    rules_file = tmp_path / "dashboard.rules.json"  # YAML is a superset of JSON
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_operations_guide_lists_every_metric() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(rc_mta_[a-z0-9_]+)` \|", guide, re.M))
    expected = {f.name + {"counter": "_total", "info": "_info"}.get(f.type, "") for f in metrics.REGISTRY.collect()}

    assert documented == expected
