"""An action needs the owner's intent for *this* request: attacks that used to act, each
through a real rc-mta listener, NSD serving corp.test's SPF/DKIM/DMARC, and clients bound
to other loopback addresses (as in test_sender_auth.py).

corp.test (the owner's domain) allows only 127.0.0.2 in SPF, signs with selector "sel",
publishes p=reject. 127.0.0.5 is a mailing service with good reverse DNS but no SPF for
corp.test; 127.0.0.6 is mallory's own server, SPF-valid for evil.test.
"""

from __future__ import annotations

import base64
import email.policy
import hashlib
import smtplib
import socket
import struct
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import dkim
import pytest
from conftest import REPLY_DOMAIN, RcMta, make_rc_mta, with_real_dns
from dnsserver import NsdServer
from mailclient import SmtpOutcome, reply_message
from mailclient import send_smtp as _send_smtp

from rc_mta.checks.binding import RequestAddresses, others_addressed
from rc_mta.errors import MessageRefused
from rc_mta.rawmessage import SINGLE_FIELDS, canonical_message

OWNER = "alice@corp.test"
KEY = (Path(__file__).parent / "keys" / "good-sel2048.pem").read_bytes()
HELO = {
    "127.0.0.1": "relay.spf.test",
    "127.0.0.2": "mail.pass.spf.test",
    "127.0.0.5": "mx.sender.spf.test",
    "127.0.0.6": "mail.evil.spf.test",
}

# The header fields each provider's outgoing DKIM signature covers on a reply (observed
# h= lists, reduced to what matters here: all of them sign To and the threading fields).
CLIENT_SIGNED_FIELDS = {
    "gmail": ["mime-version", "references", "in-reply-to", "from", "date", "message-id", "subject", "to", "cc"],
    "outlook": ["from", "to", "subject", "date", "message-id", "in-reply-to", "references", "content-type"],
    "apple-mail": ["from", "content-type", "mime-version", "subject", "message-id", "date", "to", "in-reply-to"],
    "thunderbird": [
        *("cc", "content-type", "date", "from", "in-reply-to", "message-id", "mime-version", "references"),
        *("subject", "to"),
    ],
}


def send(port: int, message: EmailMessage | bytes, rcpt: str, mail_from: str, source: str) -> SmtpOutcome:
    return _send_smtp(port, message, rcpt, mail_from=mail_from, source_address=source, helo=HELO[source])


def signed(message: EmailMessage, fields: list[str]) -> bytes:
    """``message`` as corp.test's outgoing server signs it, covering ``fields``."""
    raw = message.as_bytes(policy=email.policy.SMTP)
    names = [name.encode() for name in fields]
    return bytes(dkim.sign(raw, b"sel", b"corp.test", KEY, include_headers=names)) + raw


def untouched(rc: RcMta, task_id: str) -> bool:
    task = rc.task(task_id)
    return bool(task["status"] == "in_progress" and task["comments"] == [])


def new_request(rc: RcMta) -> tuple[str, dict[str, Any]]:
    task_id = rc.add_task(owner=OWNER)
    return task_id, rc.request(task_id)


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory, dns_server: NsdServer) -> Iterator[RcMta]:
    server = with_real_dns(make_rc_mta(tmp_path_factory.mktemp("rc-mta-intent")), dns_server)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def strict_rc(tmp_path: Path, dns_server: NsdServer) -> Iterator[RcMta]:
    server = with_real_dns(make_rc_mta(tmp_path), dns_server)
    yield server
    server.stop()


# Class 1: a genuine signature proves who, not for what --------------------------------------


@pytest.mark.parametrize("client", sorted(CLIENT_SIGNED_FIELDS))
def test_plain_reply_signed_as_major_clients_sign_it_completes(rc: RcMta, client: str) -> None:
    task_id, request = new_request(rc)
    message = reply_message(request["reply_to"], "Approved", sender=OWNER, in_reply_to=request["message_id"])

    # Sent by a mailing service of corp.test's: only the DKIM signature authenticates it.
    raw = signed(message, CLIENT_SIGNED_FIELDS[client])
    outcome = send(rc.smtp_port, raw, request["reply_to"], "b@noreply.spf.test", "127.0.0.5")

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "completed"


@pytest.mark.parametrize("client", sorted(CLIENT_SIGNED_FIELDS))
def test_fail_button_signed_as_major_clients_sign_it_fails_the_task(rc: RcMta, client: str) -> None:
    task_id, request = new_request(rc)
    message = reply_message(request["fail_address"], "Tests are red", sender=OWNER, subject="Fail")

    outcome = send(
        rc.smtp_port,
        signed(message, CLIENT_SIGNED_FIELDS[client]),
        request["fail_address"],
        "b@noreply.spf.test",
        "127.0.0.5",
    )

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "failed"


def test_client_that_dropped_the_plus_token_is_bound_by_its_signed_in_reply_to(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    bare = f"rc@{REPLY_DOMAIN}"
    message = reply_message(bare, "Approved", sender=OWNER, in_reply_to=request["message_id"])

    outcome = send(
        rc.smtp_port, signed(message, CLIENT_SIGNED_FIELDS["gmail"]), bare, "b@noreply.spf.test", "127.0.0.5"
    )

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "completed"


def test_a_complete_address_in_the_threading_fields_binds_no_complete(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    complete_token = request["complete_address"].split("+", 1)[1].split("@", 1)[0]
    # Mallory wrote to alice with Message-ID <rc.<the Complete token>@...> and Reply-To the
    # bare rc@: alice's signed reply says no, to rc@, "in reply to" that id.
    bare = f"rc@{REPLY_DOMAIN}"
    answer = reply_message(bare, "No, not this one", sender=OWNER, in_reply_to=f"<rc.{complete_token}@{REPLY_DOMAIN}>")
    signed_no = signed(answer, CLIENT_SIGNED_FIELDS["gmail"])

    outcome = send(rc.smtp_port, signed_no, request["complete_address"], "mallory@evil.test", "127.0.0.6")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.21"), outcome
    assert untouched(rc, task_id)


def test_owners_signed_forward_of_the_request_cannot_be_replayed_to_a_reply_address(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    # Alice forwards the request to a colleague: "should I approve this?" Her server signs it.
    forward = EmailMessage()
    forward["From"] = f"Alice <{OWNER}>"
    forward["To"] = "bob@corp.test"
    forward["Subject"] = "Fwd: Approve deploy to prod"
    forward["Message-ID"] = make_msgid(domain="corp.test")
    forward["In-Reply-To"] = request["message_id"]
    forward["References"] = request["message_id"]
    forward.set_content(
        "Approve? I think yes.\n\n---------- Forwarded message ---------\n"
        f"Complete: {request['complete_address']}\nReply to: {request['reply_to']}\n"
    )
    stolen = signed(forward, CLIENT_SIGNED_FIELDS["gmail"])

    # Mallory, who got a copy, re-sends it from her own server to each reply address.
    outcomes = [
        send(rc.smtp_port, stolen, address, "mallory@evil.test", "127.0.0.6")
        for address in (request["complete_address"], request["reply_to"], f"rc@{REPLY_DOMAIN}")
    ]

    assert [(o.code, o.enhanced) for o in outcomes] == [(550, "5.7.21")] * 3, outcomes
    assert "written as an answer to this request" in outcomes[0].text
    assert untouched(rc, task_id)


def test_signed_reply_to_one_request_cannot_act_on_another(rc: RcMta) -> None:
    _, first = new_request(rc)
    task_id, second = new_request(rc)
    answer = reply_message(first["complete_address"], "Approved", sender=OWNER, in_reply_to=first["message_id"])
    stolen = signed(answer, CLIENT_SIGNED_FIELDS["gmail"])

    outcome = send(rc.smtp_port, stolen, second["complete_address"], "mallory@evil.test", "127.0.0.6")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.21"), outcome
    assert untouched(rc, task_id)


def test_signed_complete_cannot_be_redirected_to_the_fail_address(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["complete_address"], "Complete", sender=OWNER)
    stolen = signed(answer, CLIENT_SIGNED_FIELDS["outlook"])

    outcome = send(rc.smtp_port, stolen, request["fail_address"], "mallory@evil.test", "127.0.0.6")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.21"), outcome
    assert untouched(rc, task_id)


def test_signature_that_does_not_cover_to_authenticates_no_action(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["complete_address"], "Approved", sender=OWNER, in_reply_to=request["message_id"])

    outcome = send(
        rc.smtp_port,
        signed(answer, ["from", "subject", "date", "in-reply-to", "references"]),
        request["complete_address"],
        "b@noreply.spf.test",
        "127.0.0.5",
    )

    assert (outcome.code, outcome.enhanced) == (550, "5.7.21"), outcome
    assert untouched(rc, task_id)


def test_signed_to_below_an_added_unsigned_to_is_what_counts(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    # Signed as a note to bob; mallory adds a To: naming the reply address above it.
    note = reply_message("bob@corp.test", "Approved", sender=OWNER)
    raw = signed(note, CLIENT_SIGNED_FIELDS["gmail"])
    forged = f"To: {request['complete_address']}\r\n".encode() + raw

    outcome = send(rc.smtp_port, forged, request["complete_address"], "mallory@evil.test", "127.0.0.6")

    assert outcome.code == 550, outcome
    assert untouched(rc, task_id)


@pytest.mark.parametrize("address", ["complete_address", "reply_to"])
def test_owners_server_relaying_a_post_to_a_list_the_reply_address_was_added_to_acts_on_nothing(
    rc: RcMta, address: str
) -> None:
    task_id, request = new_request(rc)
    # Mallory, who saw the request, adds its reply address to corp.test's team list. Alice
    # posts to the list about something else; corp.test's own server (SPF: 127.0.0.2) expands
    # it, From and To as she wrote them, to every member: rc-mta among them.
    post = reply_message("team@corp.test", "Approved, the offsite is on Friday", sender=OWNER, subject="Offsite")

    outcome = send(rc.smtp_port, post, request[address], "team-bounces@corp.test", "127.0.0.2")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.21"), outcome
    assert "written as an answer to this request" in outcome.text
    assert untouched(rc, task_id)


def test_owners_server_sending_the_reply_to_the_reply_address_still_completes(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["reply_to"], "Approved", sender=OWNER, in_reply_to=request["message_id"])
    answer["Cc"] = "bob@corp.test"

    outcome = send(rc.smtp_port, answer, request["reply_to"], OWNER, "127.0.0.2")

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "completed"


def test_signature_of_another_subdomain_does_not_speak_for_a_domain_that_asks_strict_alignment(rc: RcMta) -> None:
    owner = "alice@strictnone.dmarc.test"  # p=none; adkim=s; aspf=s
    task_id = rc.add_task(owner=owner)
    request = rc.request(task_id)
    answer = reply_message(request["complete_address"], "Approved", sender=owner)
    # tenant.dmarc.test is held by someone else; relaxed alignment would let it sign for the
    # whole organizational domain, which strictnone.dmarc.test's record says it may not.
    raw = answer.as_bytes(policy=email.policy.SMTP)
    key = (Path(__file__).parent / "keys" / "evil-sel2048.pem").read_bytes()
    names = [name.encode() for name in CLIENT_SIGNED_FIELDS["gmail"]]
    raw = bytes(dkim.sign(raw, b"sel", b"tenant.dmarc.test", key, include_headers=names)) + raw

    outcome = send(rc.smtp_port, raw, request["complete_address"], "mallory@evil.test", "127.0.0.6")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.26"), outcome
    assert untouched(rc, task_id)


@pytest.mark.parametrize("button", ["complete_address", "fail_address"])
def test_a_reply_all_to_someone_elses_question_that_went_to_a_button_acts_on_nothing(rc: RcMta, button: str) -> None:
    task_id, request = new_request(rc)
    # Mallory, who saw a button address, asks alice something with it in Cc. Alice answers
    # her, reply-all: signed by corp.test, To and Cc signed, and sent to the button as well.
    answer = reply_message("mallory@evil.test", "Yes, it is broken: stop it", sender=OWNER, subject="Re: prod?")
    answer["Cc"] = request[button]
    answer["In-Reply-To"] = answer["References"] = "<question-1@evil.test>"

    outcome = send(rc.smtp_port, signed(answer, CLIENT_SIGNED_FIELDS["gmail"]), request[button], OWNER, "127.0.0.2")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1"), outcome
    assert "went to mallory@evil.test as well" in outcome.text and "send its message to rc-mta alone" in outcome.text
    assert untouched(rc, task_id)


@pytest.mark.parametrize("asker", ["a domain literal", "an rc address of her own", "another request's address"])
def test_a_reply_all_to_a_question_from_an_address_that_is_not_this_requests_acts_on_nothing(
    rc: RcMta, asker: str
) -> None:
    task_id, request = new_request(rc)
    # The question comes from an address the address parser cannot read, or from one at the
    # reply domain that is not this request's: the reply-all still goes to someone else.
    mallory = {
        "a domain literal": "mallory@[127.0.0.6]",
        "an rc address of her own": f"rc+from-mallory@{REPLY_DOMAIN}",
        "another request's address": new_request(rc)[1]["reply_to"],
    }[asker]
    answer = reply_message(mallory, "Yes, go ahead", sender=OWNER, subject="Re: Shall I roll back prod?")
    answer["Cc"] = request["complete_address"]
    answer["In-Reply-To"] = "<question-1@evil.test>"
    answer["References"] = f"{request['message_id']} <question-1@evil.test>"

    outcome = send(
        rc.smtp_port, signed(answer, CLIENT_SIGNED_FIELDS["gmail"]), request["complete_address"], OWNER, "127.0.0.2"
    )

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1"), outcome
    assert f"went to {mallory} as well" in outcome.text, outcome.text
    assert untouched(rc, task_id)


def test_a_buttons_message_copied_to_the_requests_own_reply_address_still_acts(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    pressed = reply_message(request["complete_address"], "Ship it", sender=OWNER, subject="Complete: Deploy")
    pressed["Cc"] = f"{request['reply_to']}, rc@{REPLY_DOMAIN}"

    outcome = send(
        rc.smtp_port, signed(pressed, CLIENT_SIGNED_FIELDS["gmail"]), request["complete_address"], OWNER, "127.0.0.2"
    )

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "completed"


@pytest.mark.parametrize("first", ["complete_address", "fail_address"])
def test_a_message_to_both_buttons_of_a_request_acts_on_neither(rc: RcMta, first: str) -> None:
    task_id, request = new_request(rc)
    second = "fail_address" if first == "complete_address" else "complete_address"
    both = reply_message(f"{request[first]}, {request[second]}", "", sender=OWNER, subject="Re: Deploy")
    raw = signed(both, CLIENT_SIGNED_FIELDS["gmail"])

    with smtplib.SMTP("127.0.0.1", rc.smtp_port, source_address=("127.0.0.2", 0)) as client:
        client.ehlo(HELO["127.0.0.2"])
        client.mail(OWNER)
        assert client.rcpt(request[first])[0] == 250
        assert client.rcpt(request[second])[0] == 452  # the sending MTA delivers it on its own
        first_code, said = client.data(raw)
    later = send(rc.smtp_port, raw, request[second], OWNER, "127.0.0.2")

    for code, text in ((first_code, said.decode()), (later.code, later.text)):
        assert (code, text.split()[0]) == (550, "5.6.0"), text
        assert "both the Complete and the Fail address" in text and "press one button" in " ".join(text.split())
    assert untouched(rc, task_id)


@pytest.mark.parametrize(
    ("sender", "acts"),
    [("Bob Delegate <bob@corp.test>", False), ("bob@[127.0.0.6]", False), (f"Alice <{OWNER.upper()}>", True)],
)
def test_a_reply_sent_on_behalf_of_the_owner_is_not_the_owners(rc: RcMta, sender: str, acts: bool) -> None:
    task_id, request = new_request(rc)
    # A delegate's Send on Behalf: From the owner, Sender the delegate, signed by corp.test.
    answer = reply_message(request["reply_to"], "Approved", sender=OWNER, in_reply_to=request["message_id"])
    answer["Sender"] = sender

    outcome = send(
        rc.smtp_port,
        signed(answer, [*CLIENT_SIGNED_FIELDS["gmail"], "sender"]),
        request["reply_to"],
        OWNER,
        "127.0.0.2",
    )

    if acts:  # a client that writes its user's own address as Sender too
        assert outcome.code == 250, outcome
        assert rc.task(task_id)["status"] == "completed"
    else:
        assert (outcome.code, outcome.enhanced) == (550, "5.7.1"), outcome
        assert f"on behalf of {OWNER} (its Sender field)" in outcome.text
        assert untouched(rc, task_id)


def test_an_empty_field_or_group_names_no_one_else_and_an_unreadable_address_someone() -> None:
    ours = RequestAddresses("rc", REPLY_DOMAIN)
    button = f"rc+{'a' * 40}@{REPLY_DOMAIN}"

    def others(*fields: tuple[str, str]) -> list[str]:
        return others_addressed([("to", button), *fields], ours, OWNER, lambda token: token == "a" * 40)

    assert others(("cc", "")) == others(("cc", " undisclosed-recipients: ;")) == []
    assert others(("cc", "bob@corp.test, mallory@[127.0.0.6]")) == [
        "bob@corp.test",
        "bob@corp.test, mallory@[127.0.0.6]",
    ]
    assert others(("cc", f"rc+{'b' * 40}@{REPLY_DOMAIN}")) == [f"rc+{'b' * 40}@{REPLY_DOMAIN}"]


def test_a_buttons_message_copied_to_the_owner_herself_still_acts(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    pressed = reply_message(request["fail_address"], "Tests are red", sender=OWNER, subject="Fail: Deploy")
    pressed["Cc"] = f"Alice <{OWNER.upper()}>"  # a client that copies its user

    outcome = send(
        rc.smtp_port, signed(pressed, CLIENT_SIGNED_FIELDS["gmail"]), request["fail_address"], OWNER, "127.0.0.2"
    )

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "failed"


def signed_without_from(message: EmailMessage, fields: list[str]) -> bytes:
    """``message`` signed by corp.test over ``fields`` without From, as RFC 6376 5.4 forbids
    (dkimpy's sign() refuses to: its header generator is called directly)."""
    raw = message.as_bytes(policy=email.policy.SMTP)
    signer = dkim.DKIM(raw)
    policy = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    signer.hasher = hashlib.sha256
    names = [name.encode() for name in fields]
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(signer.body)).digest())
    tags = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"), (b"d", b"corp.test"), (b"s", b"sel")]
    tags += [(b"h", b":".join(names)), (b"bh", body_hash), (b"b", b"0" * 60)]
    key = dkim.crypto.parse_pem_private_key(KEY)
    return b"DKIM-Signature: " + signer.gen_header(tags, names, policy, b"DKIM-Signature", key) + raw


def test_signature_that_does_not_sign_from_authenticates_no_from(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    # Signed for mallory@corp.test by a corp.test signer that leaves From out of h=; she
    # then writes alice's From on it: the signature still verifies, and says nothing of it.
    note = reply_message(request["complete_address"], "Approved", sender="mallory@corp.test")
    raw = signed_without_from(note, ["to", "subject", "date", "message-id"])
    forged = raw.replace(b"Alice <mallory@corp.test>", f"Alice <{OWNER}>".encode())
    assert forged != raw

    outcome = send(rc.smtp_port, forged, request["complete_address"], "b@noreply.spf.test", "127.0.0.5")

    assert outcome.code == 550, outcome
    assert untouched(rc, task_id)


# Class 2: DKIM and the reader see the same bytes ---------------------------------------------


def raw_smtp(port: int, data: bytes, rcpt: str, mail_from: str, source: str) -> tuple[int, str]:
    """SMTP with the DATA bytes exactly as given (smtplib would mend bare CR and LF)."""
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=30) as sock:
        reader = sock.makefile("rb")

        def reply() -> tuple[int, str]:
            while True:
                line = reader.readline().decode()
                if line[3:4] != "-":
                    return int(line[:3]), line[4:].strip()

        reply()
        for command in (f"EHLO {HELO[source]}", f"MAIL FROM:<{mail_from}>", f"RCPT TO:<{rcpt}>", "DATA"):
            sock.sendall(command.encode() + b"\r\n")
            code, text = reply()
            if code >= 400:
                return code, text
        sock.sendall(data + b"\r\n.\r\n")
        return reply()


@pytest.mark.parametrize("bare", [b"\r", b"\n"], ids=["bare-CR", "bare-LF"])
def test_bare_line_break_in_the_header_is_refused(rc: RcMta, bare: bytes) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["complete_address"], "Approved", sender=OWNER)
    raw = signed(answer, CLIENT_SIGNED_FIELDS["gmail"])
    # A second "From" that only a parser splitting on the bare character would see.
    smuggled = b"X-Note: x" + bare + b"From: mallory@evil.test\r\n" + raw

    code, text = raw_smtp(rc.smtp_port, smuggled, request["complete_address"], "b@noreply.spf.test", "127.0.0.5")

    assert (code, text.split()[0]) == (554, "5.6.0"), text
    assert untouched(rc, task_id)


@pytest.mark.parametrize("bare", [b"\r", b"\n"], ids=["bare-CR", "bare-LF"])
def test_bare_line_break_in_the_body_is_read_as_a_line_break(rc: RcMta, bare: bytes) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["complete_address"], "PLACEHOLDER", sender=OWNER)
    raw = answer.as_bytes(policy=email.policy.SMTP).replace(b"PLACEHOLDER", b"Ship it" + bare + b"-- " + bare + b"A")

    # From corp.test's own server: SPF authenticates it.
    code, text = raw_smtp(rc.smtp_port, raw, request["complete_address"], OWNER, "127.0.0.2")

    assert code == 250, text
    task = rc.task(task_id)
    assert task["status"] == "completed"
    assert [c["text"] for c in task["comments"]] == ["Ship it"]


def test_header_line_that_is_not_a_field_is_refused(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["complete_address"], "Approved", sender=OWNER)
    raw = b"To: " + request["complete_address"].encode() + b"\r\nnot a header\r\n" + signed(answer, ["from", "to"])

    code, text = raw_smtp(rc.smtp_port, raw, request["complete_address"], OWNER, "127.0.0.2")

    assert (code, text.split()[0]) == (554, "5.6.0"), text
    assert untouched(rc, task_id)


# A field a message has once, there twice: the reader reads the first, DKIM the bottom-most.
ON_TOP = {
    "empty threading fields": b"In-Reply-To:\r\nReferences:\r\n",
    "blank threading fields": b"In-Reply-To: \r\nReferences:  \r\n",
    "a transfer encoding": b"Content-Transfer-Encoding: quoted-printable\r\n",
    "a second From": b"From: Alice (CEO) <alice@corp.test>\r\n",
}


@pytest.mark.parametrize("added", sorted(ON_TOP))
def test_a_field_put_on_top_of_a_signed_one_of_its_kind_is_refused(rc: RcMta, added: str) -> None:
    task_id, request = new_request(rc)
    # Alice's signed "Yes, go ahead" answers Mallory's question (whose Reply-To named the
    # reply address and Mallory): refused, as a reply to another message.
    answer = reply_message(request["reply_to"], "Yes, go ahead", sender=OWNER, subject="Re: Cleanup?")
    answer.replace_header("To", f"{request['reply_to']}, mallory@evil.test")
    answer["In-Reply-To"] = answer["References"] = "<question-1@evil.test>"
    raw = signed(answer, CLIENT_SIGNED_FIELDS["gmail"])

    # Mallory replays her copy with a field of a kind the message already has, above it.
    code, text = raw_smtp(rc.smtp_port, ON_TOP[added] + raw, request["reply_to"], "mallory@evil.test", "127.0.0.6")

    assert (code, text.split()[0]) == (550, "5.6.0"), text
    assert "more than one" in text and "(RFC 5322)" in text
    assert untouched(rc, task_id)


def test_only_the_fields_a_message_has_once_may_not_repeat() -> None:
    body = b"\r\nApproved\r\n"
    for name in sorted(SINGLE_FIELDS):
        twice = b"From: a@corp.test\r\n" if name == b"from" else b"From: a@corp.test\r\n" + name + b": x\r\n"
        with pytest.raises(MessageRefused) as refused:
            canonical_message(twice + name.upper() + b": y\r\n" + body)
        assert refused.value.reply.name == "DUPLICATE_FIELD", name
    repeatable = b"".join(
        field + b"\r\n" + field + b"\r\n"
        for field in (b"Received: by a", b"Resent-To: b@c", b"Comments: c", b"Keywords: k", b"X-Note: n")
    )
    assert canonical_message(b"From: a@corp.test\r\n" + repeatable + body).endswith(body)
    # Copies alike say the same to both readers (folded or not), and MIME-Version says nothing
    # the reader uses: mailers that write a MIME field twice are let through.
    alike = (
        b"From: a@corp.test\r\nMIME-Version: 1.0\r\nMIME-Version: 1.0 (Mailer)\r\n"
        b"Content-Type: text/plain;\r\n charset=utf-8\r\nContent-Type: text/plain; charset=utf-8\r\n"
    )
    assert canonical_message(alike + body).endswith(body)


def test_a_signed_reply_from_a_mailer_that_writes_its_mime_fields_twice_acts(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["reply_to"], "Approved", sender=OWNER, in_reply_to=request["message_id"])
    head, _, body = signed(answer, CLIENT_SIGNED_FIELDS["gmail"]).partition(b"\r\n\r\n")
    # As Tine 2.0's ActiveSync server sends an Android phone's reply: each MIME field twice.
    twice = b"".join(line + b"\r\n" for line in head.split(b"\r\n") if line.lower().startswith(b"content-type"))
    raw = head + b"\r\nMIME-Version: 1.0\r\n" + twice + b"\r\n" + body

    code, text = raw_smtp(rc.smtp_port, raw, request["reply_to"], OWNER, "127.0.0.2")

    assert code == 250, text
    assert rc.task(task_id)["status"] == "completed"


def test_no_message_of_the_corpus_repeats_a_field_it_has_once() -> None:
    corpus = sorted((Path(__file__).parent / "corpus").rglob("*.eml"))
    assert len(corpus) > 300
    for path in corpus:
        canonical_message(path.read_bytes())  # raises for a field twice


# Class 3: a trusted front's verdicts only where they are its own ------------------------------

FORGED_STAMP = "front.example.test; spf=pass smtp.mailfrom=alice@corp.test; dmarc=pass header.from=corp.test"


def _front_session(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=30, source_address=("127.0.0.1", 0))
    client.connect("127.0.0.1", port)
    client.ehlo("front.example.test")
    return client


def test_front_stamps_are_not_believed_when_the_front_speaks_for_another_client(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["trusted_authserv_ids"] = ["front.example.test"]
    strict_rc.start()
    task_id, request = new_request(strict_rc)
    message = reply_message(request["complete_address"], "Approved", sender=OWNER)
    message["Authentication-Results"] = FORGED_STAMP  # written by mallory, relayed by the front

    with _front_session(strict_rc.smtp_port) as client:
        assert client.docmd("XFORWARD", "ADDR=127.0.0.6 HELO=mail.evil.spf.test")[0] == 250
        assert client.mail("mallory@evil.test")[0] == 250
        assert client.rcpt(request["complete_address"])[0] == 250
        code, _ = client.data(message.as_bytes(policy=email.policy.SMTP))

    assert code == 550
    assert untouched(strict_rc, task_id)


def test_trusted_dmarc_pass_for_another_domain_does_not_authenticate_the_owner(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["trusted_authserv_ids"] = ["front.example.test"]
    strict_rc.start()
    task_id, request = new_request(strict_rc)
    message = reply_message(request["complete_address"], "Approved", sender=OWNER)
    message["Authentication-Results"] = (
        "front.example.test; spf=pass smtp.mailfrom=mallory@evil.test; dkim=pass header.d=corp.test; "
        "dmarc=pass header.from=evil.test"
    )

    with _front_session(strict_rc.smtp_port) as client:
        assert client.mail("mallory@evil.test")[0] == 250
        assert client.rcpt(request["complete_address"])[0] == 250
        code, _ = client.data(message.as_bytes(policy=email.policy.SMTP))

    assert code == 550
    assert untouched(strict_rc, task_id)


def test_stamp_below_the_fronts_own_received_field_is_ignored(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["trusted_authserv_ids"] = ["front.example.test"]
    strict_rc.start()
    task_id, request = new_request(strict_rc)
    message = reply_message(request["complete_address"], "Approved", sender=OWNER)
    message["Authentication-Results"] = FORGED_STAMP
    # The front prepends its own Received: what lies below it came from the sender.
    raw = (
        b"Received: from mail.evil.spf.test (mail.evil.spf.test [127.0.0.6]) by front.example.test "
        b"with ESMTP id 1; Sun, 29 Nov 2026 03:00:00 +0000\r\n" + message.as_bytes(policy=email.policy.SMTP)
    )

    with _front_session(strict_rc.smtp_port) as client:
        assert client.mail(OWNER)[0] == 250
        assert client.rcpt(request["complete_address"])[0] == 250
        code, _ = client.data(raw)

    assert code == 550
    assert untouched(strict_rc, task_id)


def test_stamp_above_the_fronts_received_field_is_believed(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["trusted_authserv_ids"] = ["front.example.test"]
    strict_rc.start()
    task_id, request = new_request(strict_rc)
    message = reply_message(request["complete_address"], "Approved", sender=OWNER)
    raw = (
        f"Authentication-Results: {FORGED_STAMP}\r\n".encode()
        + b"Received: from mail.pass.spf.test (mail.pass.spf.test [127.0.0.2]) by front.example.test "
        b"with ESMTP id 2; Sun, 29 Nov 2026 03:00:00 +0000\r\n" + message.as_bytes(policy=email.policy.SMTP)
    )

    with _front_session(strict_rc.smtp_port) as client:
        assert client.mail(OWNER)[0] == 250
        assert client.rcpt(request["complete_address"])[0] == 250
        code, text = client.data(raw)

    assert code == 250, text
    assert strict_rc.task(task_id)["status"] == "completed"


def test_trusted_dmarc_pass_does_not_relax_the_alignment_the_from_domains_record_asks(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["trusted_authserv_ids"] = ["front.example.test"]
    strict_rc.start()
    owner = "alice@strictnone.dmarc.test"  # p=none; adkim=s; aspf=s
    task_id = strict_rc.add_task(owner=owner)
    request = strict_rc.request(task_id)
    # The front's DMARC pass rests on a DKIM signature of strictnone.dmarc.test (a mail of
    # alice's, replayed); its SPF pass is for tenant.dmarc.test, held by someone else, which
    # the record's aspf=s says may not speak for alice. Relaxed, that SPF pass bound the
    # replayer's envelope to the request.
    message = reply_message(request["complete_address"], "Approved", sender=owner)
    raw = (
        b"Authentication-Results: front.example.test; spf=pass smtp.mailfrom=bounce@tenant.dmarc.test; "
        b"dkim=pass header.d=strictnone.dmarc.test; dmarc=pass header.from=strictnone.dmarc.test\r\n"
        b"Received: from mail.pass.spf.test (mail.pass.spf.test [127.0.0.2]) by front.example.test "
        b"with ESMTP id 3; Sun, 29 Nov 2026 03:00:00 +0000\r\n" + message.as_bytes(policy=email.policy.SMTP)
    )

    with _front_session(strict_rc.smtp_port) as client:
        assert client.mail("bounce@tenant.dmarc.test")[0] == 250
        assert client.rcpt(request["complete_address"])[0] == 250
        code, text = client.data(raw)

    assert code == 550, text
    assert b"5.7.26" in text
    assert untouched(strict_rc, task_id)


# Class 4: PROXY without an address is not the balancer ----------------------------------------

PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x20, 0x00, 0)


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", PROXY_V2_LOCAL], ids=["v1-UNKNOWN", "v2-LOCAL"])
def test_proxy_without_a_client_address_does_not_lend_the_balancers_exemption(strict_rc: RcMta, header: bytes) -> None:
    strict_rc.settings["inbound"]["proxy_protocol"] = True
    strict_rc.settings["checks"]["exempt_networks"] = ["127.0.0.0/8"]  # the balancer is exempt
    strict_rc.start()
    task_id, request = new_request(strict_rc)
    message = reply_message(request["complete_address"], "Approved", sender=OWNER)

    with socket.create_connection(("127.0.0.1", strict_rc.smtp_port), timeout=30) as sock:
        sock.sendall(header)
        client = smtplib.SMTP(timeout=30)
        client.sock, client.file = sock, sock.makefile("rb")
        assert client.getreply()[0] == 220
        client.ehlo("mx.sender.spf.test")
        client.mail(OWNER)
        client.rcpt(request["complete_address"])
        code, _ = client.data(message.as_bytes(policy=email.policy.SMTP))

    assert code == 550
    assert untouched(strict_rc, task_id)


# Class 7: nobody can lock others out ---------------------------------------------------------


def test_forged_mail_from_cannot_lock_the_owners_domain_out(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["rate_limits"] = {"auth_failures_per_domain": 3}
    strict_rc.start()
    task_id, request = new_request(strict_rc)

    forged = []
    for source in ["127.0.0.5", "127.0.0.6"] * 3:  # SPF fails for corp.test from both
        with smtplib.SMTP("127.0.0.1", strict_rc.smtp_port, source_address=(source, 0)) as client:
            client.ehlo(HELO[source])
            forged.append(client.mail(OWNER)[0])
    genuine = send(
        strict_rc.smtp_port,
        reply_message(request["complete_address"], "Approved", sender=OWNER),
        request["complete_address"],
        OWNER,
        "127.0.0.2",
    )

    assert forged == [550] * 6
    assert genuine.code == 250, genuine
    assert strict_rc.task(task_id)["status"] == "completed"


def test_guessing_reply_addresses_ends_the_session_with_421(strict_rc: RcMta) -> None:
    strict_rc.start()
    guesses = [f"rc+{'a' * 39}{c}@{REPLY_DOMAIN}" for c in "abcdef"]

    with smtplib.SMTP("127.0.0.1", strict_rc.smtp_port, source_address=("127.0.0.2", 0)) as client:
        client.ehlo(HELO["127.0.0.2"])
        assert client.mail(OWNER)[0] == 250
        replies = []
        for guess in guesses[:5]:
            replies.append(client.rcpt(guess))
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.rcpt(guesses[5])

    assert [code for code, _ in replies] == [550, 550, 550, 550, 421]
    assert replies[-1][1].decode().startswith("4.7.0")


def test_forged_reply_addresses_count_as_failed_authentications(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["rate_limits"] = {"auth_failures_per_ip": 3, "bad_recipients_per_session": 0}
    strict_rc.start()

    with smtplib.SMTP("127.0.0.1", strict_rc.smtp_port, source_address=("127.0.0.2", 0)) as client:
        client.ehlo(HELO["127.0.0.2"])
        assert client.mail(OWNER)[0] == 250
        for c in "abc":
            assert client.rcpt(f"rc+{'b' * 39}{c}@{REPLY_DOMAIN}")[0] == 550
        client.rset()
        code, text = client.mail(OWNER)
    with smtplib.SMTP("127.0.0.1", strict_rc.smtp_port, source_address=("127.0.0.5", 0)) as other:
        other.ehlo(HELO["127.0.0.5"])
        other_code, _ = other.mail("b@noreply.spf.test")

    assert (code, text.decode().split()[0]) == (450, "4.7.1")
    assert other_code == 250  # another client is not affected
