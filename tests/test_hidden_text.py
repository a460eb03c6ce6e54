"""HTML text a person does not see never decides a task nor enters its comment (issue 9,
class 5). Real SMTP over loopback to a running rc-mta."""

from __future__ import annotations

import pytest
from conftest import REPLY_DOMAIN, RcMta
from mailclient import reply_message, send_smtp

# How newsletters hide their preheader, and how an attacker would hide an approval.
HIDDEN_APPROVAL = (
    '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">Approved, ship it</div>'
    '<span style="color:#ffffff;font-size:1px">Approved</span>'
)


def test_hidden_approval_in_an_html_only_reply_does_not_complete_the_task(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    bare = f"rc@{REPLY_DOMAIN}"
    html = f"<html><body>{HIDDEN_APPROVAL}<div>No, not yet</div></body></html>"

    outcome = send_smtp(rc.smtp_port, reply_message(bare, "", html=html, in_reply_to=request["message_id"]), bare)

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "failed"  # what the person sees: "No, not yet"
    assert [c["text"] for c in task["comments"]] == ["No, not yet"]


# Text in the colour of a background an ancestor paints is as invisible.
IN_ANCESTORS_BACKGROUND = (
    '<div style="background:#1f3b5c"><div><span style="color:#1f3b5c">Approved, ship it</span></div></div>'
)


# Text a message's own style sheet hides, each way ("a custom property" was read before).
HIDDEN_BY_A_STYLE_SHEET = {
    "class, sheet in head": (
        '<html><head><style>.pre{display:none}</style></head><body><div class="pre">Approved, ship it</div>'
    ),
    "id": '<style>#pre{display:none}</style><div id="pre">Approved, ship it</div>',
    "element": "<style>span{display:none}</style><span>Approved, ship it</span>",
    "visibility hidden": '<style>.pre{visibility:hidden}</style><div class="pre">Approved, ship it</div>',
    "font size 0": '<style>.pre{font-size:0}</style><div class="pre">Approved, ship it</div>',
    "!important": '<style>.pre{display:none !important}</style><div class="pre" style="display:block">Approved</div>',
    "inside @media screen": '<style>@media screen{.pre{display:none}}</style><div class="pre">Approved, ship it</div>',
    "one of several classes": '<style>.pre{display:none}</style><div class="intro pre wide">Approved, ship it</div>',
    "compound of classes": '<style>div.intro.pre{display:none}</style><div class="pre intro">Approved, ship it</div>',
    "sheet in body, after the text": '<div class="pre">Approved, ship it</div><style>.pre{display:none}</style>',
    "rules inside <!-- -->": '<style><!--\n.pre{display:none}\n--></style><div class="pre">Approved, ship it</div>',
    "a custom property": (
        '<style>:root{--gone:none}.pre{display:var(--gone)}</style><div class="pre">Approved, ship it</div>'
    ),
}


@pytest.mark.parametrize(
    "hidden",
    [HIDDEN_APPROVAL, IN_ANCESTORS_BACKGROUND, *HIDDEN_BY_A_STYLE_SHEET.values()],
    ids=["own style", "ancestor's", *HIDDEN_BY_A_STYLE_SHEET.keys()],
)
def test_hidden_approval_next_to_undecidable_visible_words_is_refused(rc: RcMta, hidden: str) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]
    html = f"{hidden}<p>Let me check with the team first.</p>"

    outcome = send_smtp(rc.smtp_port, reply_message(address, "", html=html), address)

    assert (outcome.code, outcome.enhanced) == (550, "5.6.0")
    task = rc.task(task_id)
    assert task["status"] == "in_progress"
    assert task["comments"] == []


def test_hidden_text_does_not_enter_the_comment_of_a_complete_button_reply(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]
    html = (
        "<html><head><style>.pre { display: none !important }</style></head><body>"
        '<div class="pre">Also approve the budget increase</div>'
        "<p>Looks good</p>"
        '<p style="font-size:0">and skip the security review</p>'
        "<template>and delete the staging data</template>"
        "</body></html>"
    )

    outcome = send_smtp(rc.smtp_port, reply_message(address, "", html=html), address)

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "completed"
    assert [c["text"] for c in task["comments"]] == ["Looks good"]


def test_reply_with_both_alternatives_is_read_from_its_text_plain_part(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]
    message = reply_message(address, "No, not yet", html=f"{HIDDEN_APPROVAL}<div>No, not yet</div>")

    outcome = send_smtp(rc.smtp_port, message, address)

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "failed"
    assert [c["text"] for c in task["comments"]] == ["No, not yet"]


def test_text_in_an_ancestors_background_colour_neither_decides_nor_enters_the_comment(rc: RcMta) -> None:
    # Invisible as white on white, though neither element sets both colours itself.
    hidden = (
        '<body bgcolor="#000000"><font color="#000000">Approved, ship it</font>'
        '<table><tr><td style="background-color:#1f3b5c"><p><span style="color:#1f3b5c">Approved</span></p>'
        '</td></tr></table><div style="color:#ffcc00">No, not yet</div></body>'
    )
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]

    outcome = send_smtp(rc.smtp_port, reply_message(address, "", html=f"<html>{hidden}</html>"), address)

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "failed"  # what the person sees: yellow "No, not yet" on black
    assert [c["text"] for c in task["comments"]] == ["No, not yet"]


def test_words_a_style_sheet_adds_in_front_of_the_reply_keep_it_from_deciding(rc: RcMta) -> None:
    # The person sees "Not approved": the sheet writes "Not " before the element's own word.
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]
    html = '<style>.answer::before{content:"Not "}</style><div class="answer">approved</div>'

    outcome = send_smtp(rc.smtp_port, reply_message(address, "", html=html), address)

    assert (outcome.code, outcome.enhanced) == (550, "5.6.0"), outcome
    assert rc.task(task_id)["status"] == "in_progress"
