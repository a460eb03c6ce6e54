"""The HTTP listener on the service's own loop: /metrics, /healthz, /readyz, and the API.

aiohttp, because it is asyncio-native (runs on our loop with no ASGI server in between),
mature, and gives us the HTTP client for the Release, webhook and Graph back ends too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .config import HttpConfig, MtaStsConfig, parse_host_port
from .watchdog import LoopLag


@dataclass
class Health:
    """What /healthz and /readyz report. Parts register their own probes."""

    started: float = field(default_factory=time.time)
    listeners_bound: bool = False
    # /healthz fails while the loop's worst recent lag is over this ([http] max_loop_lag)
    max_loop_lag: float = 1.0
    loop_lag: LoopLag = field(default_factory=LoopLag)
    # name → seconds since the part last proved alive, and how old is too old
    liveness: dict[str, Callable[[], tuple[float, float]]] = field(default_factory=dict)
    # name → coroutine raising on trouble
    readiness: dict[str, Callable[[], Awaitable[object]]] = field(default_factory=dict)
    # name → coroutine returning a warning (or None): reported, but ready all the same
    warnings: dict[str, Callable[[], Awaitable[str | None]]] = field(default_factory=dict)

    def live(self) -> tuple[bool, dict[str, object]]:
        lag = self.loop_lag.worst()
        report: dict[str, object] = {"loop_lag_seconds": round(lag, 3)}
        ok = lag <= self.max_loop_lag
        for name, probe in self.liveness.items():
            age, limit = probe()
            fresh = age <= limit
            report[name] = {"ok": fresh, "age_seconds": round(age, 1), "limit_seconds": limit}
            ok = ok and fresh
        return ok, report

    def problems(self, report: dict[str, object]) -> list[dict[str, str]]:
        """What ``live`` found wrong, one item per part, as the API's error details."""
        found = []
        lag = report["loop_lag_seconds"]
        if isinstance(lag, float | int) and lag > self.max_loop_lag:
            found.append(
                {
                    "field": "loop_lag_seconds",
                    "message": f"the event loop ran {lag:g}s late (max_loop_lag is {self.max_loop_lag:g}s)",
                }
            )
        for name, part in report.items():
            if isinstance(part, dict) and not part.get("ok", True):
                found.append(
                    {
                        "field": name,
                        "message": f"last alive {part['age_seconds']}s ago (limit {part['limit_seconds']}s)",
                    }
                )
        return found

    async def ready(self) -> tuple[bool, dict[str, object]]:
        report: dict[str, object] = {"listeners": self.listeners_bound}
        ok = self.listeners_bound
        for name, probe in self.readiness.items():
            try:
                await asyncio.wait_for(probe(), timeout=5)
                report[name] = "ok"
            except Exception as exc:
                report[name] = f"{type(exc).__name__}: {exc}"
                ok = False
        warnings: dict[str, str] = {}
        for name, warn in self.warnings.items():
            try:
                warning = await asyncio.wait_for(warn(), timeout=5)
            except Exception as exc:
                warning = f"{type(exc).__name__}: {exc}"
            if warning:
                warnings[name] = warning
        if warnings:
            report["warnings"] = warnings
        return ok, report


HEALTH_KEY = web.AppKey("health", Health)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    """200 with the report; 503 with the report and the API's error shape saying what failed."""
    health = request.app[HEALTH_KEY]
    ok, report = health.live()
    if ok:
        return web.json_response({"status": "ok", **report})
    error = {"code": "unavailable", "message": "rc-mta is not healthy", "details": health.problems(report)}
    return web.json_response({"status": "failing", **report, "error": error}, status=503)


async def _readyz(request: web.Request) -> web.Response:
    ok, report = await request.app[HEALTH_KEY].ready()
    return web.json_response({"status": "ready" if ok else "not ready", **report}, status=200 if ok else 503)


def make_app(health: Health, *, with_metrics: bool = True) -> web.Application:
    app = web.Application()
    app[HEALTH_KEY] = health
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if with_metrics:
        app.router.add_get("/metrics", _metrics)
    return app


def mta_sts_policy(config: MtaStsConfig) -> str:
    """The MTA-STS policy file (RFC 8461 3.2): CRLF-separated ``key: value`` lines."""
    lines = ["version: STSv1", f"mode: {config.mode}", *(f"mx: {mx}" for mx in config.mx), f"max_age: {config.max_age}"]
    return "\r\n".join(lines) + "\r\n"


def add_mta_sts_route(app: web.Application, config: MtaStsConfig) -> None:
    """Serve the policy at /.well-known/mta-sts.txt, for an HTTPS front on mta-sts.<domain>
    (senders fetch it only over HTTPS with a valid certificate, and follow no redirect)."""
    body = mta_sts_policy(config)

    async def policy(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/plain", headers={"Cache-Control": "max-age=300"})

    app.router.add_get("/.well-known/mta-sts.txt", policy)


def metrics_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    return app


async def start_http(
    app: web.Application, listen: str, config: HttpConfig, shutdown_timeout: float = 10.0
) -> web.AppRunner:
    """Serve ``app`` at ``listen``; no client holds a connection by sending slowly, and at
    ``cleanup`` requests under way get ``shutdown_timeout`` seconds.

    aiohttp closes a connection whose request line and headers are not all in by
    ``keepalive_timeout`` (armed when it opens and after each answer): ``header_timeout``.
    A body the handler did not read (a refusal, a 408) is drained for ``lingering_time``
    before the connection closes: ``body_timeout``, as for a body it reads.
    """
    host, port = parse_host_port(listen)
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=config.header_timeout,
        lingering_time=config.body_timeout,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
