"""The benches' yardstick: a bare aiosmtpd server that accepts everything and does nothing.

Why a module: bench/throughput.py and bench/floor.py run it as a process of its own
(``python bench/sink.py PORT``), bench/instructions.py serves it in its own process under
callgrind, and all of them must measure the very same server. It advertises PIPELINING as
rc-mta does, so a client speaks exactly the same protocol to both.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session

HOSTNAME = "sink.bench.test"


class Sink:
    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


async def start(host: str, port: int) -> asyncio.Server:
    """The sink listening on the running loop."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(Sink(), hostname=HOSTNAME, enable_SMTPUTF8=True, decode_data=False),
        host,
        port,
        reuse_address=True,
        backlog=2048,
    )


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await start("127.0.0.1", port)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
