"""The request mail as people get it: what it says in each language, what mail clients
allow, how it renders (headless Chromium, light and dark), and that a reply quoting it is
read as the person meant."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import urllib.request
import zlib
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta, require_server, wait_until
from mailclient import reply_message, send_smtp

from rc_mta.config import Settings
from rc_mta.reading import DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS, interpret_action, parse_reply
from rc_mta.request_mail import LANGUAGES, MAX_DESCRIPTION_CHARS, ReplyAddresses, RequestContext, compose
from rc_mta.store import Request

NOW = datetime(2026, 11, 29, 9, 30, tzinfo=UTC).timestamp()
ADDRESSES = ReplyAddresses(
    complete="rc+ctoken@reply.example.test",
    fail="rc+ftoken@reply.example.test",
    reply_to="rc+dtoken@reply.example.test",
    message_id="<dtoken@reply.example.test>",
)
CONTEXT = RequestContext(
    context_title="Release 2026.12 / Production",
    link="https://release.example.test/#/tasks/Release1-Phase2-Task3",
    requested_by="Bob Builder",
    due=datetime(2026, 12, 1, 17, 0, tzinfo=UTC),
    description="Deploys billing 2.4 to both clusters.\n\nRollback: redeploy 2.3.7.",
)
# What each language's mail must say, beyond the title and addresses.
EXPECTED = {
    "en": ("Action needed: ", "Requested by: Bob Builder", "expires in 7 days, on Sun 6 Dec 2026, 09:30 UTC"),
    "de": ("Ihre Entscheidung: ", "Angefragt von: Bob Builder", "läuft in 7 Tagen ab, am So. 6. Dez. 2026, 09:30 UTC"),
    "fr": ("Décision attendue : ", "Demandé par: Bob Builder", "expire dans 7 jours, le dim. 6 déc. 2026, 09:30 UTC"),
}
BUTTON_COLOURS = {"complete": (0x1B, 0x5E, 0x20), "fail": (0xB7, 0x1C, 0x1C)}


def _request(title: str = "Approve deploy to prod") -> Request:
    return Request(
        id="0123456789abcdef",
        task_id="t-1",
        owner="alice@example.com",
        title=title,
        created_at=NOW,
        expires_at=NOW + 7 * 86400,
        revoked_at=None,
        message_id=ADDRESSES.message_id,
    )


def _mail(language: str, context: RequestContext = CONTEXT, title: str = "Approve deploy to prod") -> EmailMessage:
    return compose(Settings(), _request(title), ADDRESSES, NOW, context=context, language=language)  # type: ignore[arg-type]


def _parts(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_mail_leads_with_the_title_and_says_everything_in_both_parts(language: str) -> None:
    message = _mail(language)
    text, html = _parts(message)
    subject_prefix, requested_by, expires = EXPECTED[language]

    assert message["Subject"] == subject_prefix + "Approve deploy to prod"
    assert message["Content-Language"] == language
    assert text.startswith("Approve deploy to prod\n")
    for fact in (requested_by, expires, "Release 2026.12 / Production", CONTEXT.link, "Rollback: redeploy 2.3.7."):
        assert fact in text, fact
        assert fact.split(": ", 1)[-1] in html.replace("&#x27;", "'"), fact
    assert ADDRESSES.complete in text and ADDRESSES.fail in text
    assert f'href="mailto:{ADDRESSES.complete}?' in html and f'href="mailto:{ADDRESSES.fail}?' in html
    assert "t-1" not in text.split("-- rc-mta request --")[0]  # the task id only in the reference block
    assert re.search(r"-- rc-mta request --\n.*\nRequest: rc\+dtoken@reply\.example\.test\nTask: t-1\n-- end", text)


def test_a_mail_without_context_has_no_empty_labels() -> None:
    text, html = _parts(_mail("en", context=RequestContext()))

    assert "Requested by" not in text and "Due" not in text and "Open the task" not in text
    assert "<table" not in html


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_html_keeps_within_what_mail_clients_allow(language: str) -> None:
    longest = RequestContext(
        context_title="c" * 500, link="https://x.test/" + "a" * 2000, requested_by="r" * 500,
        due=CONTEXT.due, description=("word " * 1000)[:MAX_DESCRIPTION_CHARS],
    )  # fmt: skip
    message = _mail(language, context=longest, title="t" * 500)
    _, html = _parts(message)

    assert len(bytes(message)) <= 100 * 1024
    assert f'<html lang="{language}">' in html
    assert not re.search(r"<img|<script|<link|<iframe|\burl\(|\bsrc=", html, re.IGNORECASE)
    assert '<meta name="color-scheme" content="light dark">' in html
    # Styles are inline: the one <style> block only adds dark-mode colours.
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert style.strip().startswith("@media (prefers-color-scheme: dark)")


def _luminance(rgb: tuple[int, int, int]) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def test_every_colour_the_html_sets_reads_at_wcag_aa_contrast() -> None:
    _, html = _parts(_mail("en"))
    light_page, dark_page = (255, 255, 255), (0x12, 0x12, 0x12)
    media = html.index("@media (prefers-color-scheme: dark)")
    dark_rules = html[media : html.index("</style>")]
    light_html = html[: html.index("<style>")] + html[html.index("</style>") :]

    for colour in set(re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{6})", light_html)) - {"#ffffff"}:
        assert _contrast(_hex(colour), light_page) >= 4.5, colour
    for colour in re.findall(r"color:\s*(#[0-9a-fA-F]{6})", dark_rules):
        assert _contrast(_hex(colour), dark_page) >= 4.5, colour
    for background in re.findall(r"background-color:(#[0-9a-fA-F]{6})", html):
        assert _contrast(_hex(background), (255, 255, 255)) >= 4.5, background  # white button label


# Rendering --------------------------------------------------------------------------------


def _read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels from an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    bpp = 3 if colour_type == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [bytes(r[i : i + 3]) for r in rows for i in range(0, stride, bpp)]  # type: ignore[misc]


def _screenshot(html_file: Path, png: Path, *, dark: bool) -> dict[tuple[int, int, int], int]:
    """Render ``html_file`` in headless Chromium; count the pixels of each colour."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require_server(chromium is not None, "Chromium (Debian package chromium)")
    assert chromium is not None
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += ["--window-size=700,900", f"--screenshot={png}", *(["--force-dark-mode"] if dark else [])]
    subprocess.run([*command, html_file.as_uri()], capture_output=True, timeout=120, check=True)
    _, _, pixels = _read_png(png.read_bytes())
    counts: dict[tuple[int, int, int], int] = {}
    for pixel in pixels:
        key = (pixel[0], pixel[1], pixel[2])
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_chromium_renders_both_buttons_on_a_page_that_follows_the_colour_scheme(tmp_path: Path, dark: bool) -> None:
    page = tmp_path / "request.html"
    page.write_text(_parts(_mail("de"))[1], encoding="utf-8")

    counts = _screenshot(page, tmp_path / "request.png", dark=dark)

    background = max(counts, key=lambda colour: counts[colour])
    assert (_luminance(background) < 0.1) if dark else (_luminance(background) > 0.9), background
    for name, colour in BUTTON_COLOURS.items():
        assert counts.get(colour, 0) > 1500, f"the {name} button is not drawn ({counts.get(colour, 0)} pixels)"


# Reading replies that quote it ----------------------------------------------------------------


def _gmail_reply(request: EmailMessage, words: str) -> EmailMessage:
    text, _ = _parts(request)
    quoted = "\n".join(f"> {line}" if line else ">" for line in text.splitlines())
    body = f"{words}\n\nOn Sun, 29 Nov 2026 at 10:00, rc-mta <rc-mta@reply.example.test> wrote:\n{quoted}\n"
    return reply_message(str(request["Reply-To"]), body, in_reply_to=str(request["Message-ID"]))


def _outlook_reply(request: EmailMessage, words: str) -> EmailMessage:
    text, _ = _parts(request)
    body = (
        f"{words}\n\n________________________________\nFrom: rc-mta <rc-mta@reply.example.test>\n"
        f"Sent: Sunday, November 29, 2026 10:00 AM\nTo: alice@example.com\nSubject: {request['Subject']}\n\n{text}"
    )
    return reply_message(str(request["Reply-To"]), body, in_reply_to=str(request["Message-ID"]))


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("style", [_gmail_reply, _outlook_reply], ids=["quoted", "top-posted"])
def test_a_reply_quoting_the_request_is_read_as_the_person_wrote_it(language: str, style: Any) -> None:
    request = _mail(language)
    for words, meant in (("Looks good, ship it", "complete"), ("No, the rollback plan is missing", "fail")):
        reply = parse_reply(bytes(style(request, words)))

        assert reply.comment == words
        assert interpret_action(reply.comment, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS) == meant


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_words_each_mail_teaches_are_the_words_the_reader_knows(language: str) -> None:
    words = {"en": ("Complete", "Fail"), "de": ("Erledigt", "Abgelehnt"), "fr": ("Approuvé", "Refusé")}[language]
    text, _ = _parts(_mail(language))

    for word, meant in zip(words, ("complete", "fail"), strict=True):
        assert word in text
        assert interpret_action(word, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS) == meant


def test_a_french_request_from_the_api_is_answered_in_french_and_completes(fresh_rc: RcMta) -> None:
    token = "request-mail-api-token-0123456789abcdef"
    fresh_rc.settings["http"]["api_tokens"] = [token]
    fresh_rc.start()
    task_id = fresh_rc.add_task(title="Déployer la facturation 2.4")
    body = {"task_id": task_id, "language": "fr", "requested_by": "Bob", "due": "2026-12-01T17:00:00+01:00"}
    call = urllib.request.Request(
        fresh_rc.http_url + "/v1/requests",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(call, timeout=30) as response:
        assert response.status == 201
    mail_file = wait_until(lambda: next((fresh_rc.workdir / "outbox").glob("*.eml"), None), what="the request mail")
    mail = message_from_bytes(mail_file.read_bytes(), policy=policy.default)
    assert isinstance(mail, EmailMessage)
    text, _ = _parts(mail)

    assert mail["Subject"] == "Décision attendue : Déployer la facturation 2.4"
    assert "Échéance: mar. 1 déc. 2026, 16:00 UTC" in text
    sent = send_smtp(fresh_rc.smtp_port, _gmail_reply(mail, "Approuvé, merci"), str(mail["Reply-To"]))
    assert sent.code == 250, sent.text
    task = fresh_rc.task(task_id)
    assert task["status"] == "completed"
    assert [c["text"] for c in task["comments"]] == ["Approuvé, merci"]


def test_the_expiry_is_said_in_hours_when_it_is_near() -> None:
    soon = Request(**{**_request().__dict__, "expires_at": NOW + 5 * 3600})
    text, _ = _parts(compose(Settings(), soon, ADDRESSES, NOW, language="en"))

    assert "This request expires in 5 hours, on Sun 29 Nov 2026, 14:30 UTC." in text
