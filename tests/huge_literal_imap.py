"""Test-only IMAP server that answers a partial FETCH with a literal far larger than asked
(8 GiB for ``BODY.PEEK[]<0.N>``), as fast as the client reads: Dovecot cannot be made to
break RFC 3501 6.4.5 on purpose. Every other command gets just enough to let a poller log
in, select and search (one message, UID 1)."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class HugeLiteralImap:
    def __init__(self, literal: int = 8 * 1024**3) -> None:
        self.literal = literal
        self.sent = 0  # literal bytes written, over every connection
        self.fetches = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
            self.port = int(server.sockets[0].getsockname()[1])
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] ready\r\n")
        with contextlib.suppress(ConnectionError, OSError):
            while line := await reader.readline():
                tag, _, rest = line.decode().strip().partition(" ")
                words = rest.upper().split()
                if words[:1] == ["CAPABILITY"]:
                    writer.write(b"* CAPABILITY IMAP4rev1 UIDPLUS MOVE\r\n")
                elif words[:1] == ["SELECT"]:
                    writer.write(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n")
                elif words[:1] == ["LIST"]:
                    writer.write(b'* LIST () "/" "x"\r\n')
                elif words[:2] == ["UID", "SEARCH"]:
                    writer.write(b"* SEARCH\r\n" if "DRAFT" in words else b"* SEARCH 1\r\n")  # no drafts
                elif words[:2] == ["UID", "FETCH"]:
                    self.fetches += 1
                    writer.write(f"* 1 FETCH (UID 1 BODY[]<0> {{{self.literal}}}\r\n".encode())
                    chunk = b"X" * (1024 * 1024)
                    while True:  # until the client hangs up
                        writer.write(chunk)
                        self.sent += len(chunk)
                        await writer.drain()
                writer.write(f"{tag} OK done\r\n".encode())
                await writer.drain()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
