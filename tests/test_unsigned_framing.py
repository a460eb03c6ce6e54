"""What a signature leaves open may not change how its signed body reads.

Gmail's DKIM signature does not cover Content-Type or Content-Transfer-Encoding. Mallory,
in the request's thread, writes something that ends in words of a decision hidden from a
plain reading (``=0A=0AApproved.``, ``+AAoACg-Approved.``, an Outlook quote); the owner
thanks her, quoting it, and the reply is refused as deciding nothing. Mallory then replays
her copy with those fields changed, so the quoted words become a line of the owner's own:
refused, the task untouched. A genuine reply encoded as Gmail encodes it still acts.
Real rc-mta and NSD, as in test_thread_binding.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RcMta
from corpus_reader import human_cases, human_controls
from mailclient import reply_message
from test_intent import CLIENT_SIGNED_FIELDS, raw_smtp, signed
from test_thread_binding import OWNER, new_request, sent_by_owner

from rc_mta.checks.framing import FRAMING_FIELDS, unread_framing
from rc_mta.pipeline import read_message

QUESTION = "<heads-up.1@evil.test>"


@pytest.fixture
def rc(auth_rc: RcMta) -> RcMta:
    return auth_rc


# Her words as the owner's client quoted them, and the field's value that would unquote them.
OUTLOOK_QUOTE = "-----Original Message-----\nFrom: Mallory\nSent: Monday\nSubject: Heads-up\n\nApproved."
CHANGES: dict[str, tuple[str, bytes, bytes]] = {
    "7bit declared quoted-printable": ("> Heads-up.=0A=0AApproved.", b"Encoding: 7bit", b"Encoding: quoted-printable"),
    "utf-8 declared utf-7": ("> Heads-up.+AAoACg-Approved.", b'charset="utf-8"', b"charset=utf-7"),
    "plain text declared HTML": ("> Heads-up.<br><br>Approved.", b"text/plain", b"text/html"),
    "an Outlook quote declared a part": (
        OUTLOOK_QUOTE,
        b"text/plain;",
        b'multipart/mixed; boundary="---Original Message-----";',
    ),
}


def owners_thanks(rc: RcMta, quoted: str) -> tuple[str, str, bytes]:
    """The owner's signed "thanks", quoting Mallory's message in the request's thread:
    refused by itself, as its words decide nothing."""
    task_id, request = new_request(rc)
    body = f"Thanks for letting me know.\n\nOn Mon, Mallory wrote:\n{quoted}\n"
    message = reply_message(request["reply_to"], body, sender=OWNER, subject="Re: Heads-up")
    message.replace_header("To", f"{request['reply_to']}, mallory@evil.test")
    message["In-Reply-To"] = QUESTION
    message["References"] = f"{request['message_id']} {QUESTION}"
    raw = signed(message, CLIENT_SIGNED_FIELDS["gmail"])
    said = sent_by_owner(rc, raw, request["reply_to"])
    assert said.startswith("550 5.6.0 Could not tell"), said
    return task_id, request["reply_to"], raw


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_what_the_signature_leaves_open_cannot_unquote_the_owners_quote(rc: RcMta, change: str) -> None:
    quoted, old, new = CHANGES[change]
    task_id, reply_to, raw = owners_thanks(rc, quoted)
    assert old in raw.split(b"\r\n\r\n", 1)[0], old
    forged = raw.replace(old, new, 1)

    code, text = raw_smtp(rc.smtp_port, forged, reply_to, "mallory@evil.test", "127.0.0.6")

    assert (code, text.split()[0]) == (550, "5.6.0"), (code, text)
    assert "does not cover how this message's text is to be read" in text, text
    task = rc.task(task_id)
    assert task["status"] == "in_progress" and task["comments"] == []


def test_a_reply_gmail_encoded_quoted_printable_still_acts(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    message = reply_message(request["reply_to"], sender=OWNER)
    message.set_content("Genehmigt – bitte ausrollen.\n\n-- \nAlice\n", cte="quoted-printable")
    message["In-Reply-To"] = message["References"] = request["message_id"]
    raw = signed(message, CLIENT_SIGNED_FIELDS["gmail"])
    assert b"Content-Transfer-Encoding: quoted-printable" in raw

    said = sent_by_owner(rc, raw, request["reply_to"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "completed"


def test_no_reply_of_the_corpus_reads_otherwise_with_every_framing_field_unsigned() -> None:
    paths: list[Path] = [case.path for case in human_cases()] + human_controls()
    assert len(paths) > 250
    for path in paths:
        _, parsed = read_message(path.read_bytes(), None)
        assert unread_framing(parsed.message, FRAMING_FIELDS) is None, path.name


def test_a_boundary_moved_down_into_the_quoted_html_is_refused() -> None:
    # Gmail's HTML mode: multipart/alternative, its boundary in the unsigned Content-Type.
    # Mallory's quoted HTML holds a line that would start a part of its own.
    html = "<div>Thanks</div><blockquote>Heads-up\n--moved\nContent-Type: text/plain\n\nApproved.\n</blockquote>"
    message = reply_message("rc@reply.example.test", "Thanks\n\n> Heads-up", sender=OWNER, html=html)
    raw = bytes(message)
    boundary = message.get_boundary()
    assert boundary is not None
    moved = raw.replace(f'boundary="{boundary}"'.encode(), b'boundary="moved"', 1)
    assert moved != raw

    _, genuine = read_message(raw, None)
    _, forged = read_message(moved, None)

    assert unread_framing(genuine.message, FRAMING_FIELDS) is None
    assert unread_framing(forged.message, FRAMING_FIELDS) == "text comes before its first part"
    assert unread_framing(forged.message, frozenset({"content-transfer-encoding"})) is None  # Content-Type signed
