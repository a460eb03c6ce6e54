"""A calendar's meeting message (an iTIP REPLY, COUNTER, REQUEST or CANCEL, or Outlook's
meeting mail) is machine mail: never a person's answer, whatever address an invitation
named as its organiser. Declining a meeting whose ORGANIZER was the Complete address
completed the task (found in review); now it is dropped with 250, the task untouched."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import make_msgid

import pytest
from conftest import RcMta
from test_one_path import signed
from test_thread_binding import OWNER, new_request, sent_by_owner

from rc_mta.machine_mail import machine_reason


def ics(method: str | None, organizer: str, partstat: str = "DECLINED") -> str:
    head = f"METHOD:{method}\r\n" if method else ""
    return (
        f"BEGIN:VCALENDAR\r\n{head}PRODID:Microsoft Exchange Server 2010\r\nVERSION:2.0\r\n"
        "BEGIN:VEVENT\r\n"
        f"ORGANIZER:mailto:{organizer}\r\n"
        f"ATTENDEE;PARTSTAT={partstat}:mailto:{OWNER}\r\n"
        "SUMMARY:Quick sync about prod\r\nUID:040000008200E00074C5B7101A82E008\r\n"
        "DTSTART:20261201T100000Z\r\nDTEND:20261201T103000Z\r\nDTSTAMP:20261130T060000Z\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def meeting_response(
    to: str, body: str = "", *, method: str | None = "REPLY", in_type: bool = True, subject: str = "Declined: sync"
) -> EmailMessage:
    """A calendar client's response: its text part (often empty) and the iTIP object, whose
    method some clients give in the part's Content-Type and all in the object itself."""
    message = EmailMessage()
    message["From"] = f"Alice <{OWNER}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="corp.test")
    message.set_content(body)
    params = {"method": method} if method and in_type else {}
    message.add_alternative(ics(method, to), subtype="calendar", params=params)
    return message


def reason(message: EmailMessage) -> str | None:
    return machine_reason(BytesParser(policy=policy.default).parsebytes(bytes(message)), OWNER)


@pytest.mark.parametrize("method", ["REPLY", "COUNTER", "CANCEL", "REQUEST", "reply"])
def test_a_scheduling_message_is_machine_mail(method: str) -> None:
    assert reason(meeting_response("rc@reply.example", method=method)) == f"calendar {method.lower()}"


def test_the_method_in_the_calendar_object_alone_counts() -> None:
    assert reason(meeting_response("rc@reply.example", method="REPLY", in_type=False)) == "calendar reply"


def test_outlooks_meeting_mail_is_known_by_its_content_class() -> None:
    message = meeting_response("rc@reply.example", "Approved")
    message["Content-Class"] = "urn:content-classes:calendarmessage"

    assert reason(message) == "calendar message"


@pytest.mark.parametrize("method", ["PUBLISH", None])
def test_an_event_a_person_shares_is_no_meeting_response(method: str | None) -> None:
    # "Approved - see you at the review" with the review's event attached: a person's reply.
    message = meeting_response("rc@reply.example", "Approved - see you at the review", method=method)

    assert reason(message) is None


def test_an_invitation_a_person_attached_to_a_reply_leaves_it_a_reply() -> None:
    # "Approved, invite for the rollout attached": an .ics file the person attached, with a
    # name, is no calendar's own message; dropping the reply as machine mail lost the answer.
    message = EmailMessage()
    message["From"] = f"Alice <{OWNER}>"
    message["To"] = "rc@reply.example"
    message["Subject"] = "Re: Deploy"
    message.set_content("Approved, invite for the rollout attached")
    message.add_attachment(ics("REQUEST", OWNER).encode(), "text", "calendar", filename="rollout.ics")
    assert reason(message) is None
    inline = meeting_response("rc@reply.example", method="REQUEST")
    assert reason(inline) == "calendar request"  # the invitation itself still is


@pytest.fixture
def rc(auth_rc: RcMta) -> RcMta:
    return auth_rc


def test_a_declined_meeting_to_the_complete_address_is_dropped(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    response = meeting_response(request["complete_address"], subject="Declined: Quick sync about prod")

    said = sent_by_owner(rc, signed(response), request["complete_address"])

    assert said.startswith("250 2.0.0 Automatic reply accepted and discarded (calendar reply)"), said
    assert rc.task(task_id)["status"] == "in_progress"


def test_an_accepted_meeting_with_words_to_the_reply_address_decides_nothing(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    response = meeting_response(request["reply_to"], "Sounds good", subject="Accepted: Quick sync about prod")
    response["In-Reply-To"] = response["References"] = request["message_id"]

    said = sent_by_owner(rc, signed(response), request["reply_to"])

    assert said.startswith("250 2.0.0 Automatic reply accepted and discarded"), said
    assert rc.task(task_id)["status"] == "in_progress"
