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


# Text a message's own style sheet hides, each way. From "colour of the background, by class"
# on, each was read (and completed the task) before style sheets' colours, clipping, custom
# properties, SVG sheets and escaped or bracketed selectors were followed.
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
    # Colours: a class's text colour on an ancestor's background, and the other way round.
    "colour of the background, by class": (
        '<style>.note{color:#1f3b5c}</style><div style="background:#1f3b5c"><span class="note">Approved</span></div>'
    ),
    "background by class, colour inline": (
        '<style>.box{background-color:#1f3b5c}</style><div class="box"><font color="#1f3b5c">Approved</font></div>'
    ),
    "body background by the sheet": (
        '<style>body{background:#000}p.x{color:#000}</style><body><p class="x">Approved, ship it</p>'
    ),
    # One rule's overflow cut-off meets another's (or the element's own) one-pixel height.
    "clipped by the sheet, one pixel high inline": (
        '<style>.pre{overflow:hidden}</style><div class="pre" style="height:1px">Approved, ship it</div>'
    ),
    "a custom property": (
        '<style>:root{--gone:none}.pre{display:var(--gone)}</style><div class="pre">Approved, ship it</div>'
    ),
    "an SVG style sheet's character references": (
        '<svg width="0" height="0"><style>&#46;pre{display:none}</style></svg><div class="pre">Approved</div>'
    ),
    "an attribute test holding #id": '<style>span[title="#x"]{display:none}</style><span title="#x">Approved</span>',
    "a symbol font by class": '<style>.sym{font-family:Wingdings}</style><span class="sym">Approved, ship it</span>',
    "an escaped dot in a class": '<style>.a\\.b{display:none}</style><div class="a.b">Approved, ship it</div>',
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


@pytest.mark.parametrize(
    "body", ["\u202eApproved", "Let me check. \u202eApproved\u202c"], ids=["alone", "after words, ended"]
)
def test_words_drawn_in_another_order_by_a_bidi_override_do_not_decide(rc: RcMta, body: str) -> None:
    # U+202E shows "\u202eApproved" as "devorppA": the person never saw the word.
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]

    outcome = send_smtp(rc.smtp_port, reply_message(address, body), address)

    assert (outcome.code, outcome.enhanced) == (550, "5.6.0"), outcome
    assert rc.task(task_id)["status"] == "in_progress"


# What Outlook for Windows writes in every HTML reply: its style sheet (fonts, paragraph
# and link styles, list definitions), a link colour on <body>, and a signature in grey.
OUTLOOK_REPLY = """<html xmlns:o="urn:schemas-microsoft-com:office:office"><head>
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<style><!--
/* Font Definitions */
@font-face {font-family:"Cambria Math"; panose-1:2 4 5 3 5 4 6 3 2 4;}
@font-face {font-family:Calibri; panose-1:2 15 5 2 2 2 4 3 2 4;}
/* Style Definitions */
p.MsoNormal, li.MsoNormal, div.MsoNormal {margin:0cm; font-size:11.0pt; font-family:"Calibri",sans-serif;}
a:link, span.MsoHyperlink {mso-style-priority:99; color:#0563C1; text-decoration:underline;}
a:visited, span.MsoHyperlinkFollowed {mso-style-priority:99; color:#954F72; text-decoration:underline;}
p.MsoListParagraph, li.MsoListParagraph, div.MsoListParagraph {mso-style-priority:34; margin-top:0cm;
  margin-right:0cm; margin-bottom:0cm; margin-left:36.0pt; font-size:11.0pt; font-family:"Calibri",sans-serif;}
span.EmailStyle17 {mso-style-type:personal-reply; font-family:"Calibri",sans-serif; color:#1F497D;}
.MsoChpDefault {mso-style-type:export-only; font-size:10.0pt;}
@page WordSection1 {size:612.0pt 792.0pt; margin:72.0pt 72.0pt 72.0pt 72.0pt;}
div.WordSection1 {page:WordSection1;}
@list l0 {mso-list-id:1203793386; mso-list-type:hybrid;}
@list l0:level1 {mso-level-number-format:bullet; mso-level-text:\\F0B7; mso-level-tab-stop:none;
  mso-level-number-position:left; text-indent:-18.0pt; font-family:Symbol;}
--></style><!--[if gte mso 9]><xml>
<o:shapedefaults v:ext="edit" spidmax="1026" />
</xml><![endif]--></head>
<body lang="EN-US" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">
<div class="WordSection1">
<p class="MsoNormal"><span style="color:#1F497D">Approved, go ahead.<o:p></o:p></span></p>
<p class="MsoNormal"><span style="color:#1F497D"><o:p>&nbsp;</o:p></span></p>
<p class="MsoNormal"><span style="font-size:9.0pt;color:#7F7F7F">Alice Example | Release Manager<o:p></o:p></span></p>
<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">
<p class="MsoNormal"><b>From:</b> rc-mta &lt;rc@reply.example&gt;<br><b>Sent:</b> Monday, June 3, 2024 9:14 AM<br>
<b>To:</b> Alice Example &lt;alice@example.com&gt;<br><b>Subject:</b> Action needed<o:p></o:p></p></div>
<p class="MsoNormal">Please approve deploy to prod.<o:p></o:p></p>
</div></body></html>"""


def test_an_outlook_reply_with_its_style_sheet_decides(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]

    outcome = send_smtp(rc.smtp_port, reply_message(address, "", html=OUTLOOK_REPLY), address)

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "completed"
    assert [c["text"] for c in task["comments"]] == ["Approved, go ahead.\n\nAlice Example | Release Manager"]
