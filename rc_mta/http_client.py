"""What rc-mta reads of the answers of the HTTP services it calls (Release, a webhook
receiver, Graph, an OAuth2 token endpoint): at most so many bytes of a body.

Time is bounded by each call's own ``aiohttp.ClientTimeout(total=...)``, which covers
reading the body too (a body that trickles in is cut at the call's timeout). Size is not:
``response.read()``/``text()``/``json()`` buffer whatever comes. A body past its bound is
not read further: ``AnswerTooLarge`` is an ``aiohttp.ClientPayloadError`` (the answer was
broken), so every caller already treats it as an answer that did not arrive: a GET is
tried again, a POST's outcome is unknown, and the reply waits (451) or the poll is tried
again; nothing is lost.
"""

from __future__ import annotations

import logging

import aiohttp

log = logging.getLogger("rc_mta.http_client")

# An error's body (a reason quoted on one line), a token endpoint's answer.
SMALL_BODY = 1024 * 1024
# A success's body: a Release task with its comments, a page of releases, a Graph listing.
LARGE_BODY = 64 * 1024 * 1024


class AnswerTooLarge(aiohttp.ClientPayloadError):
    """A body longer than the caller reads: the answer counts as broken (not arrived)."""


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """``response``'s body, if it is at most ``limit`` bytes; else AnswerTooLarge, with a
    WARNING naming the service and the bound, and the rest never read (the connection
    is dropped, not drained)."""
    declared = response.content_length
    size = 0
    chunks: list[bytes] = []
    if declared is None or declared <= limit:
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
        else:
            return b"".join(chunks)
    response.close()  # what is left stays unread
    declared_text = f" (Content-Length {declared})" if declared is not None and declared > limit else ""
    log.warning(
        "%s %s answered HTTP %d with a body over the %d bytes rc-mta reads%s: taken as no answer, to be tried again",
        response.method,
        response.url.with_query(None),
        response.status,
        limit,
        declared_text,
    )
    raise AnswerTooLarge(f"HTTP {response.status} answer over {limit} bytes")


async def read_text(response: aiohttp.ClientResponse, limit: int) -> str:
    """``read_body`` as text, in the answer's charset (UTF-8 if none or unknown)."""
    data = await read_body(response, limit)
    try:
        return data.decode(response.charset or "utf-8", "replace")
    except LookupError:
        return data.decode("utf-8", "replace")
