"""Tests for reply interpretation: what a person's email reply means to rc-mta."""

from __future__ import annotations

import time
from collections.abc import Callable
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from rc_mta.reading import (
    DEFAULT_COMPLETE_WORDS,
    DEFAULT_FAIL_WORDS,
    METADATA_END,
    METADATA_START,
    ParsedReply,
    html_to_text,
    interpret_action,
    parse_reply,
)
from rc_mta.reading.html import MAX_HTML_TAGS

REQUEST_ID = "<req-1234.abcdef@rc-mta.example>"
METADATA = f"{METADATA_START}\ntask: 1234\ntoken: s3cr3t-token\naction words: complete / fail\n{METADATA_END}"


def _headers(msg: EmailMessage | MIMEMultipart | MIMEText, subject: str = "Re: [rc-mta] Approve deployment") -> None:
    msg["From"] = "Alice Example <Alice@Example.COM>"
    msg["To"] = "tasks@rc-mta.example"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 03 Jun 2024 09:20:00 +0200"
    msg["Message-ID"] = "<reply-1@mail.example.com>"
    msg["In-Reply-To"] = REQUEST_ID
    msg["References"] = REQUEST_ID


def _quoted(text: str) -> str:
    return "\n".join(("> " + line) if line else ">" for line in text.split("\n"))


def _action(reply: ParsedReply) -> str | None:
    return interpret_action(reply.comment, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)


ORIGINAL_REQUEST = f"Please reply with complete or fail.\nIf in doubt, reject it.\n\n{METADATA}"


# --------------------------------------------------------------------------
# Client-specific replies
# --------------------------------------------------------------------------


def _gmail_reply(own_words: str) -> bytes:
    plain = (
        f"{own_words}\n\n"
        "On Mon, Jun 3, 2024 at 9:14\u202fAM Workflow Robot <tasks@rc-mta.example>\n"
        "wrote:\n\n"
        f"{_quoted(ORIGINAL_REQUEST)}\n"
    )
    html = (
        f'<div dir="ltr">{own_words}</div><br>'
        '<div class="gmail_quote gmail_quote_container">'
        '<div dir="ltr" class="gmail_attr">On Mon, Jun 3, 2024 at 9:14\u202fAM Workflow Robot '
        "&lt;tasks@rc-mta.example&gt; wrote:<br></div>"
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">'
        "Please reply with complete or fail.<br>If in doubt, reject it.</blockquote></div>"
    )
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(plain)
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def test_gmail_reply_comment_excludes_quoted_request() -> None:
    reply = parse_reply(_gmail_reply("Approved, go ahead."))
    assert reply.comment == "Approved, go ahead."
    assert "If in doubt, reject it." in reply.text  # text keeps the quote
    assert _action(reply) == "complete"
    assert reply.auto_reply is None


def test_gmail_wrapped_attribution_line_is_not_part_of_comment() -> None:
    reply = parse_reply(_gmail_reply("No, the numbers are wrong."))
    assert "wrote" not in reply.comment
    assert "Workflow Robot" not in reply.comment
    assert _action(reply) == "fail"


def test_gmail_html_only_reply_drops_gmail_quote() -> None:
    msg = EmailMessage()
    _headers(msg)
    html = (
        '<div dir="ltr">Done &amp; dusted</div><br>'
        '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon wrote:</div>'
        "<blockquote>reject</blockquote><div>fail</div></div><div>Thanks</div>"
    )
    msg.set_content(html, subtype="html")
    reply = parse_reply(msg.as_bytes())
    assert reply.text == "Done & dusted\n\nThanks"
    assert _action(reply) == "complete"


OUTLOOK_HTML = """<html><head>
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<style type="text/css" style="display:none;"> P {margin-top:0;margin-bottom:0;} </style>
</head>
<body dir="ltr">
<div class="elementToProof" style="font-family: Aptos, sans-serif; font-size: 12pt;">
Rejected &ndash; budget not signed off yet.</div>
<div class="elementToProof"><br></div>
<div class="elementToProof">Bob</div>
<div id="appendonsend"></div>
<hr style="display:inline-block;width:98%" tabindex="-1">
<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif" style="font-size:11pt" color="#000000">
<b>From:</b> Workflow Robot &lt;tasks@rc-mta.example&gt;<br>
<b>Sent:</b> Monday, June 3, 2024 9:14 AM<br>
<b>To:</b> Bob &lt;bob@corp.example&gt;<br>
<b>Subject:</b> [rc-mta] Approve deployment</font>
<div>&nbsp;</div></div>
<div>Please reply with complete or fail.<br>
-- rc-mta request --<br>task: 1234<br>-- end of rc-mta request --</div>
</body></html>
"""


@pytest.mark.parametrize("with_appendonsend", [True, False])
def test_outlook_html_only_reply_gives_comment(with_appendonsend: bool) -> None:
    html = OUTLOOK_HTML if with_appendonsend else OUTLOOK_HTML.replace('<div id="appendonsend"></div>', "")
    msg = EmailMessage()
    _headers(msg, subject="RE: [rc-mta] Approve deployment")
    msg.set_content(html, subtype="html")
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Rejected – budget not signed off yet.\n\nBob"
    assert "Please reply" not in reply.text
    assert "From:" not in reply.text
    assert "margin-top" not in reply.text  # <style> dropped
    assert _action(reply) == "fail"


def test_outlook_plain_text_header_block_is_cut() -> None:
    body = (
        "Approved.\r\n\r\n"
        "________________________________\r\n"
        "From: Workflow Robot <tasks@rc-mta.example>\r\n"
        "Sent: Monday, June 3, 2024 9:14 AM\r\n"
        "To: Bob <bob@corp.example>\r\n"
        "Subject: [rc-mta] Approve deployment\r\n\r\n"
        "Please reply with complete or fail.\r\n"
    )
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(body)
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Approved."


def test_outlook_german_von_gesendet_block_is_cut() -> None:
    body = "Ja, passt.\n\nVon: Workflow Robot <tasks@rc-mta.example>\nGesendet: Montag, 3. Juni 2024 09:14\nfail\n"
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(body)
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Ja, passt."
    assert _action(reply) == "complete"


@pytest.mark.parametrize("separator", ["-----Original Message-----", "----- Original Message -----"])
def test_original_message_separator_is_cut(separator: str) -> None:
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(f"ok\n\n{separator}\nFrom: robot\nPlease reply with fail\n")
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "ok"


def test_apple_mail_reply_with_iphone_signature() -> None:
    plain = (
        "Yes\n\nSent from my iPhone\n\n"
        "> On 3 Jun 2024, at 09:14, Workflow Robot <tasks@rc-mta.example> wrote:\n>\n"
        f"{_quoted(ORIGINAL_REQUEST)}\n"
    )
    html = (
        '<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head>'
        '<body dir="auto"><div dir="ltr">Yes</div><div dir="ltr"><br><div>Sent from my iPhone</div></div>'
        '<div dir="ltr"><br><blockquote type="cite">On 3 Jun 2024, at 09:14, Workflow Robot wrote:<br><br></blockquote>'
        '</div><blockquote type="cite"><div dir="ltr">reject</div></blockquote></body></html>'
    )
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(plain)
    msg.add_alternative(html, subtype="html")
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Yes"
    assert _action(reply) == "complete"


def test_apple_mail_html_only_reply_drops_cited_blockquote() -> None:
    html = (
        '<html><body dir="auto"><div dir="ltr"></div><div dir="ltr">Declined, see ticket.</div>'
        '<div dir="ltr"><br><blockquote type="cite">On 3 Jun 2024, at 09:14, Robot wrote:<br><br></blockquote></div>'
        '<blockquote type="cite"><div dir="ltr">Please approve</div></blockquote></body></html>'
    )
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(html, subtype="html")
    reply = parse_reply(msg.as_bytes())
    assert reply.text == "Declined, see ticket."
    assert _action(reply) == "fail"


def test_thunderbird_html_reply_drops_moz_cite_prefix() -> None:
    html = (
        "<html><head></head><body><p>Completed, thanks.<br></p>"
        '<div class="moz-cite-prefix">On 03/06/2024 09:14, Workflow Robot wrote:<br></div>'
        '<blockquote type="cite" cite="mid:req-1234.abcdef@rc-mta.example">Please reply with fail</blockquote>'
        '<pre class="moz-signature" cols="72">-- \nCarol</pre></body></html>'
    )
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(html, subtype="html")
    reply = parse_reply(msg.as_bytes())
    assert "Workflow Robot wrote" not in reply.text
    assert "Please reply" not in reply.text
    assert "Carol" in reply.text
    assert reply.comment == "Completed, thanks."


def test_thunderbird_format_flowed_attribution_is_unwrapped() -> None:
    # A flowed soft break (trailing space) splits the attribution over two lines.
    body = (
        b"Approved\r\n\r\n"
        b"On 03/06/2024 09:14, Workflow Robot via a very long display name \r\n"
        b"wrote:\r\n"
        b"> Please reply with complete or \r\n"
        b"> fail.\r\n"
    )
    raw = (
        b"From: carol@example.org\r\nSubject: Re: task\r\nMessage-ID: <tb@example.org>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8; format=flowed\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\n" + body
    )
    reply = parse_reply(raw)
    assert "> Please reply with complete or fail." in reply.text
    assert reply.comment == "Approved"


def test_german_am_schrieb_reply_is_cut() -> None:
    body = (
        "Nein, bitte noch nicht freigeben.\n\n"
        "Am Mo., 3. Juni 2024 um 09:14 Uhr schrieb Workflow Robot <tasks@rc-mta.example>:\n\n"
        f"{_quoted(ORIGINAL_REQUEST)}\n"
    )
    msg = EmailMessage()
    _headers(msg, subject="AW: [rc-mta] Approve deployment")
    msg.set_content(body)
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Nein, bitte noch nicht freigeben."
    assert _action(reply) == "fail"


@pytest.mark.parametrize(
    "attribution",
    [
        "Le lun. 3 juin 2024 à 09:14, Workflow Robot <tasks@rc-mta.example> a écrit :",
        "El lun, 3 jun 2024 a las 09:14, Workflow Robot (<tasks@rc-mta.example>) escribió:",
        "Il giorno lun 3 giu 2024 alle ore 09:14 Workflow Robot <tasks@rc-mta.example> ha scritto:",
        "Op ma 3 jun 2024 om 09:14 schreef Workflow Robot <tasks@rc-mta.example>:",
        "Em seg., 3 de jun. de 2024 às 09:14, Workflow Robot <tasks@rc-mta.example> escreveu:",
    ],
)
def test_non_english_attribution_lines_are_cut(attribution: str) -> None:
    msg = EmailMessage()
    _headers(msg)
    # Unquoted text after the attribution would leak into the comment if the cut failed.
    msg.set_content(f"Oui\n\n{attribution}\nreject everything\n")
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Oui"


# --------------------------------------------------------------------------
# Charsets and transfer encodings
# --------------------------------------------------------------------------


def test_latin1_reply_is_decoded() -> None:
    raw = (
        b"From: =?iso-8859-1?q?Fran=E7ois_M=FCller?= <francois@example.fr>\r\n"
        b"Subject: =?iso-8859-1?q?R=E9p=2E_=3A_t=E2che?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Approuv=E9, tr=E8s bien. Gr=FC=DFe\r\n"
    )
    reply = parse_reply(raw)
    assert reply.text.strip() == "Approuvé, très bien. Grüße"
    assert reply.subject == "Rép. : tâche"
    assert reply.from_address == "francois@example.fr"
    assert _action(reply) == "complete"


def test_windows1252_reply_is_decoded() -> None:
    body = "\u201cDone\u201d \u2013 cost \u20ac5".encode("cp1252")
    for label in (b"windows-1252", b"iso-8859-1"):  # Outlook often mislabels cp1252 as latin-1
        raw = (
            b"From: bob@corp.example\r\nSubject: Re: task\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=" + label + b"\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body + b"\r\n"
        )
        reply = parse_reply(raw)
        assert reply.comment == "\u201cDone\u201d \u2013 cost \u20ac5", label
        assert _action(reply) == "complete"


@pytest.mark.parametrize(
    ("charset", "cte", "words"),
    [
        ("iso-2022-jp", "7bit", "承認します。"),
        ("koi8-r", "8bit", "Да, согласовано"),
        ("utf-8", "base64", "sí, aprobado ✔"),
        ("shift_jis", "base64", "完了"),
    ],
)
def test_declared_charsets_are_decoded(charset: str, cte: str, words: str) -> None:
    msg = MIMEText(words, "plain", charset)
    _headers(msg)
    raw = msg.as_bytes()
    assert words.encode("utf-8") not in raw or charset == "utf-8"
    reply = parse_reply(raw)
    assert reply.text.strip() == words


def test_unknown_charset_falls_back_instead_of_raising() -> None:
    raw = (
        b"From: x@example.com\r\nSubject: Re: task\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nYes \xe9t\xe9\r\n"
    )
    reply = parse_reply(raw)
    assert reply.text.startswith("Yes ")
    assert _action(reply) == "complete"


def test_non_text_codec_label_is_not_used_for_decoding() -> None:
    raw = (
        b"From: x@example.com\r\nSubject: Re\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=base64\r\n\r\nno thanks\r\n"
    )
    assert parse_reply(raw).comment == "no thanks"


# --------------------------------------------------------------------------
# Body selection and HTML
# --------------------------------------------------------------------------


def test_text_attachment_is_not_taken_as_body() -> None:
    msg = EmailMessage()
    _headers(msg)
    msg.set_content("<p>approved</p>", subtype="html")
    msg.add_attachment("reject reject reject", filename="notes.txt")
    reply = parse_reply(msg.as_bytes())
    assert reply.text == "approved"


def test_inline_text_file_is_not_taken_as_body() -> None:
    raw = (
        b'From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="m"\r\n\r\n'
        b'--m\r\nContent-Type: text/plain\r\nContent-Disposition: inline; filename="log.txt"\r\n\r\nreject\r\n'
        b"--m\r\nContent-Type: text/plain\r\n\r\nDone\r\n--m--\r\n"
    )
    assert parse_reply(raw).comment == "Done"


def test_plain_part_preferred_over_html() -> None:
    msg = EmailMessage()
    _headers(msg)
    msg.set_content("plain words")
    msg.add_alternative("<p>html words</p>", subtype="html")
    assert parse_reply(msg.as_bytes()).text.strip() == "plain words"


def test_forwarded_message_attachment_is_not_the_body() -> None:
    inner = EmailMessage()
    inner["Subject"] = "old"
    inner.set_content("approved (old mail)")
    outer = EmailMessage()
    _headers(outer)
    outer.set_content("<div>reject</div>", subtype="html")
    outer.make_mixed()
    outer.attach(_as_rfc822(inner))
    assert parse_reply(outer.as_bytes()).text == "reject"


def _as_rfc822(inner: EmailMessage) -> EmailMessage:
    part = EmailMessage()
    part.set_content(inner)
    return part


def test_html_drops_scripts_and_unescapes_entities() -> None:
    html = (
        "<html><head><title>Reply</title></head><body>"
        "<script>document.write('approve')</script>"
        "<p>Fail &mdash; tests are &lt;red&gt;</p><ul><li>one</li><li>two</li></ul>"
        "<table><tr><td>a</td><td>b</td></tr></table>line one<div>line two</div></body></html>"
    )
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(html, subtype="html")
    reply = parse_reply(msg.as_bytes())
    assert reply.text == "Fail — tests are <red>\none\ntwo\na b\nline one\nline two"
    assert _action(reply) == "fail"


# --------------------------------------------------------------------------
# Hidden HTML text: what a person does not see neither decides nor enters the comment
# --------------------------------------------------------------------------

HIDDEN_WORDS = "Approved, ship it. Also wire 5000 EUR"
VISIBLE_HTML = "<div>No, not yet &ndash; tests are red</div>"
VISIBLE_COMMENT = "No, not yet – tests are red"

# Each way of hiding text, with {} where the hidden words go; the visible words follow.
HIDING_TECHNIQUES = {
    "display none": '<div style="display:none">{}</div>',
    "display none, spaced and important": '<div style="DISPLAY : None !important">{}</div>',
    "visibility hidden": '<p style="visibility: hidden">{}</p>',
    "hidden attribute": "<div hidden>{}</div>",
    "hidden attribute, upper case": "<DIV HIDDEN>{}</DIV>",
    "font size 0": '<span style="font-size:0">{}</span>',
    "font size 1px": '<span style="font-size:1px;line-height:1px">{}</span>',
    "font shorthand 0/0": '<span style="font:0/0 a">{}</span>',
    "preheader max-height 0": '<div style="max-height:0px;overflow:hidden">{}</div>',
    "zero-size box": '<div style="width:0;height:0;overflow:hidden">{}</div>',
    "one-pixel clipped box": '<div style="height:1px;overflow:hidden">{}</div>',
    "white text": '<span style="color:#ffffff">{}</span>',
    "white text, named": '<span style="color: White">{}</span>',
    "white text, rgb": '<span style="color:rgb(255, 255, 255)">{}</span>',
    "white font tag": '<font color="#FFFFFF">{}</font>',
    "white on white": '<p style="color:#fefefe;background-color:#ffffff">{}</p>',
    "text coloured like its background": '<p style="color:#333;background:#333333">{}</p>',
    "transparent text": '<span style="color:rgba(0,0,0,0)">{}</span>',
    "opacity 0": '<div style="opacity:0">{}</div>',
    "Outlook mso-hide": '<div style="mso-hide:all">{}</div>',
    "off-screen": '<div style="position:absolute;left:-9999px">{}</div>',
    "off-screen to the right": '<div style="position:absolute;right:-9999px">{}</div>',
    "translated off-screen": '<div style="transform:translateX(-9999px)">{}</div>',
    "scaled to a dot": '<div style="transform:scale(0.01)">{}</div>',
    "zoomed to a dot": '<div style="zoom:0.01">{}</div>',
    "coloured like an ancestor's background": (
        '<table><tr><td bgcolor="#1f3b5c"><p><span style="color:#1f3b5c">{}</span></p></td></tr></table>'
    ),
    "clipped to nothing": '<div style="position:absolute;clip:rect(0 0 0 0)">{}</div>',
    "CSS escapes": '<div style="disp\\6c ay:n\\6f ne">{}</div>',
    "CSS comment inside": '<div style="display:/* x */none">{}</div>',
    "first of two style attributes": '<div style="display:none" style="color:red">{}</div>',
    "entity-encoded style": '<div style="display&#58;none">{}</div>',
    "title in head": "<html><head><title>{}</title></head><body>",
    "title in body": "<title>{}</title>",
    "style element": "<style>/* {} */</style>",
    "script": '<script>var s = "{}";</script>',
    "template": "<template><p>{}</p></template>",
    "noscript": "<noscript><p>{}</p></noscript>",
    "textarea": "<textarea>{}</textarea>",
    "closed details": "<details><p>{}</p></details>",
    "class hidden by a style sheet": (
        '<style>.preheader {{ display: none !important; }}</style><div class="preheader">{}</div>'
    ),
    "style sheet after the element": '<span class="pre x">{}</span><style>span.pre{{font-size:0}}</style>',
    "id hidden inside @media": '<style>@media screen {{ #pre {{ visibility:hidden }} }}</style><div id="pre">{}</div>',
    "type hidden by a style sheet": "<style>h6 {{ display:none }}</style><h6>{}</h6>",
    "colour of an ancestor's background, by class": (
        '<style>.n {{ color:#1f3b5c }}</style><div style="background:#1f3b5c"><span class="n">{}</span></div>'
    ),
    "background by class under an inline colour": (
        '<style>.box {{ background:#1f3b5c }}</style><div class="box"><font color="#1f3b5c">{}</font></div>'
    ),
    "clipped by the sheet, one pixel high inline": (
        '<style>.c {{ overflow:hidden }}</style><div class="c" style="height:1px">{}</div>'
    ),
    "one pixel high by the sheet, clipped by another rule": (
        '<style>.c {{ height:1px }} .d {{ overflow:hidden }}</style><div class="c d">{}</div>'
    ),
    "display from a custom property": '<div style="--h:none;display:var(--h)">{}</div>',
    "moved off-screen by the margin shorthand": '<div style="margin:0 0 0 -9999px">{}</div>',
    "SVG style sheet with character references": (
        '<svg><style>&#46;h {{ display:none }}</style></svg><div class="h">{}</div>'
    ),
    "attribute test holding #id": '<style>span[title="#x"] {{ display:none }}</style><span title="#x">{}</span>',
    "attribute test holding a space": '<style>span[title="a b"] {{ display:none }}</style><span title="a b">{}</span>',
    "drawn in a symbol font": '<span style="font-family:Wingdings">{}</span>',
    "drawn in a symbol font, font shorthand": "<span style=\"font:12px/1 'Wingdings 2', serif\">{}</span>",
    "letters drawn as discs": '<span style="-webkit-text-security:disc">{}</span>',
    "drawn backwards": '<span style="unicode-bidi:bidi-override;direction:rtl">{}</span>',
    "bdo right to left": '<bdo dir="rtl">{}</bdo>',
    "nested deep inside a hidden ancestor": (
        '<div style="display:none"><table><tr><td><p><b>{}</b></p></td></tr></table></div>'
    ),
    "hidden ancestor with an unclosed paragraph": "<div hidden><p>{}<br></div>",
    "hidden ancestor, end tag with spaces": '<div style="display:none">{}</div  >',
    "shown to browsers, not to Outlook": "<!--[if !mso]><!-->{}<!--<![endif]-->",
    "comment": "<!-- {} -->",
}


def _html_reply(html: str) -> ParsedReply:
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(html, subtype="html")
    return parse_reply(msg.as_bytes())


@pytest.mark.parametrize("template", HIDING_TECHNIQUES.values(), ids=HIDING_TECHNIQUES.keys())
def test_hidden_text_neither_decides_nor_enters_the_comment(template: str) -> None:
    reply = _html_reply(template.format(HIDDEN_WORDS) + VISIBLE_HTML)

    assert _action(reply) == "fail"  # the visible words decide
    assert reply.comment == VISIBLE_COMMENT
    assert "Approved" not in reply.text and "5000" not in reply.text


@pytest.mark.parametrize("template", HIDING_TECHNIQUES.values(), ids=HIDING_TECHNIQUES.keys())
def test_visible_approval_still_decides_next_to_a_hidden_refusal(template: str) -> None:
    reply = _html_reply(template.format("No, reject it") + "<p>Approved &ndash; thanks</p>")

    assert _action(reply) == "complete"
    assert reply.comment == "Approved – thanks"


def test_visible_text_in_colour_on_its_own_background_decides() -> None:
    html = (
        '<p style="color:#ffffff;background-color:#2e7d32">Approved</p>'
        '<p><font color="#000000">from my phone</font></p><p style="font: 12px/1.5 Arial">Bob</p>'
    )
    reply = _html_reply(html)

    assert _action(reply) == "complete"
    assert reply.comment == "Approved\nfrom my phone\nBob"


def test_text_after_an_unclosed_head_is_shown() -> None:
    reply = _html_reply("<html><head><meta charset=utf-8><title>Re: task</title>Approved<p>Bob</p>")

    assert reply.comment == "Approved\nBob"


# Markup a browser reads differently from html.parser, or that hides everything after it:
# the reader must then show nothing rather than the words after it.
HIDDEN_TO_THE_END = {
    "self-closing syntax on a div": "<div hidden/>Approved",
    "end tag a browser ignores across a div": "<span hidden><div>x</span>Approved",
    "end tag a browser ignores across a table cell": "<div hidden><table><tr><td>x</div>Approved",
    "formatting element cloned by the browser": "<b hidden><div>x</b>Approved",
    "end tag with a space after </": "<div hidden>x</ div>Approved",
    "end tag with a NUL in its name": "<div hidden>x</div\x00>Approved",
    "script end tag with a space after </": "<script></ script>Approved</script>",
    "script double-escaped by <!--<script>": "<script><!--<script></script>Approved</script>",
    "comment ended by -- > (not an end to a browser)": "<!-- -- >Approved -->",
    "unfinished comment at the end": "<!-- <div>Approved",
    "unfinished tag at the end": '<p title="Approved',
    "a second body tag with hidden": "<p>Approved</p><body hidden>",
    "html tag with display none": '<html style="display:none"><p>Approved</p>',
    "external style sheet": '<link rel="stylesheet" href="https://example.net/x.css"><p>Approved</p>',
    "imported style sheet": "<style>@import url(https://example.net/x.css);</style><p>Approved</p>",
    "web font": "<style>@font-face { font-family: x; src: url(data:font/woff2;base64,AAAA) }</style><p>Approved</p>",
    "universal hiding selector": "<style>* { color: white }</style><p>Approved</p>",
    "negated hiding selector": "<style>p:not(.shown) { display: none }</style><p>Approved</p>",
    "Outlook-only markup": '<!--[if mso]><div style="display:none"><![endif]-->Approved',
    "tag name with a Kelvin sign (not <track>)": "<tra\u212a hidden>Approved",
    "plaintext": "<plaintext>Approved",
    "nesting deeper than the reader follows": "<div>" * 300 + "Approved",
    "hiding class with an escaped dot": "<style>.a\\.b { display: none }</style><p>Approved</p>",
    "namespaced hiding selector": "<style>h|p { display: none }</style><p>Approved</p>",
    "escaped @import": "<style>@\\69mport url(https://example.net/x.css);</style><p>Approved</p>",
    "escaped, upper-case negation": "<style>p:N\\6fT(.shown) { display: none }</style><p>Approved</p>",
    "colours an animation sets": "<style>@keyframes k { to { color: #1f3b5c } }</style><p>Approved</p>",
    "the whole message in its background's colour": (
        "<style>html { background: #222 } body { color: #222 }</style><p>Approved</p>"
    ),
    # Words a style adds, which the reader does not see: the person reads "Not Approved".
    "words before a class": '<style>.a::before { content: "Not " }</style><div class="a">Approved</div>',
    "words after a type": "<style>b:after { content: ' not' }</style><p><b>Approved</b></p>",
    "a list marker": "<ul style=\"list-style-type:'Not '\"><li>Approved</li></ul>",
    "quotes of a <q>": "<p style=\"quotes:'Not ' ''\"><q>Approved</q></p>",
    "a counter style's markers": (
        '<style>@counter-style n { system: cyclic; symbols: "Not "; suffix: "" }</style>'
        '<ol style="list-style:n"><li>Approved</li></ol>'
    ),
}


@pytest.mark.parametrize("html", HIDDEN_TO_THE_END.values(), ids=HIDDEN_TO_THE_END.keys())
def test_markup_that_may_hide_the_rest_decides_nothing(html: str) -> None:
    reply = _html_reply(html)

    assert "Approved" not in reply.text
    assert _action(reply) is None


def test_a_style_sheets_colours_leave_visible_text_readable() -> None:
    html = (
        "<style>body { background: #222; color: #eee } .sig { color: #7f7f7f } a:link { color: #0563c1 }"
        " .btn { background: #0563c1; color: #fff }</style>"
        '<p>Approved</p><p class="sig">Bob</p><p><a href="https://example.net">docs</a></p>'
    )
    reply = _html_reply(html)

    assert _action(reply) == "complete"
    assert reply.comment == "Approved\nBob\ndocs"


def test_text_plain_alternative_is_read_and_the_html_is_not() -> None:
    # A client that sends both shows the same words in each; rc-mta reads text/plain,
    # so hidden HTML cannot add words, and HTML-only words do not count either.
    msg = EmailMessage()
    _headers(msg)
    msg.set_content("No, not yet\n")
    msg.add_alternative(f"<div hidden>{HIDDEN_WORDS}</div><div>No, not yet</div><p>Approved</p>", subtype="html")
    reply = parse_reply(msg.as_bytes())

    assert reply.comment == "No, not yet"
    assert _action(reply) == "fail"
    assert "Approved" not in reply.text


HOSTILE_HTML = {
    "</ runs": lambda n: "</" * (n // 2),
    "<a runs": lambda n: "<a" * (n // 2),
    "<? runs": lambda n: "<?" * (n // 2),
    "unfinished attribute runs": lambda n: "<a x='" * (n // 6),
    "open hidden divs": lambda n: "<div hidden>" * (n // 12),
    "end tags a browser ignores": lambda n: "<span hidden>" + "<div>" * 200 + "</span>" * (n // 7),
    "style braces": lambda n: "<style>" + "{" * n + "</style>",
    "style comments": lambda n: "<style>" + "/*" * (n // 2) + "</style>",
    "style strings": lambda n: "<style>" + '"\\' * (n // 2) + "</style>",
    "opacity() runs of a filter": lambda n: '<p style="filter:' + "opacity(" * (n // 8) + '">Approved</p>',
    "opacity() runs in a style sheet": lambda n: "<style>p{filter:" + "opacity(" * (n // 8) + "}</style>",
    "colour rules and classed elements": lambda n: (
        "<style>" + ".a{color:#123}.b{background:#123}" * (n // 68) + "</style>" + '<b class="a b">x</b>' * (n // 40)
    ),
    "classes on one element": lambda n: (
        "<style>.a{color:#111}.b{background:#eee}</style><p class='" + "a b c " * (n // 6)
    ),
    "selector brackets": lambda n: "<style>" + "[a(" * (n // 3) + "{display:none}</style>",
    "selector escapes": lambda n: "<style>" + "\\2e " * (n // 5) + "{display:none}</style>",
    "selector lists": lambda n: "<style>" + ".a," * (n // 3) + "{color:#000}</style>",
    "SVG style sheet markup": lambda n: "<svg><style>" + "<&#" * (n // 3) + "</style></svg>",
}


@pytest.mark.parametrize("make", HOSTILE_HTML.values(), ids=HOSTILE_HTML.keys())
def test_hostile_html_takes_linear_time(make: Callable[[int], str]) -> None:
    def seconds(size: int) -> float:
        html = make(size)
        best = float("inf")
        for _ in range(3):
            start = time.thread_time()
            html_to_text(html)
            best = min(best, time.thread_time() - start)
        return best

    small, large = seconds(32 * 1024), seconds(128 * 1024)
    assert large < 10 * max(small, 0.005)  # four times the input; quadratic would be sixteen


# Short tags, many of them: linear, but some 20 µs a tag (4-5 s a MiB) while text/plain is
# read to 64 KiB only. Read now to MAX_HTML_TAGS tags, a person's words come first.
SHORT_TAGS = {"<p> runs": "<p>", "<b>x</b> runs": "<b>x</b>"}


def _cpu_seconds(read: Callable[[], object]) -> float:
    start = time.thread_time()
    read()
    return time.thread_time() - start


@pytest.mark.parametrize("atom", SHORT_TAGS.values(), ids=SHORT_TAGS.keys())
def test_a_megabyte_of_short_tags_is_read_only_to_the_tag_limit(atom: str) -> None:
    html = "<p>Approved, thanks</p>" + atom * (1000 * 1024 // len(atom))
    text = ""

    def read() -> None:
        nonlocal text
        text = html_to_text(html)

    took = _cpu_seconds(read)
    assert took < 1.0, f"{took:.1f}s for 1 MiB of {atom}"  # 4-5 s when every tag was read
    assert text.startswith("Approved, thanks")
    assert len(text) < 2 * MAX_HTML_TAGS


def test_the_tag_limit_is_shared_by_the_html_parts_of_one_message() -> None:
    msg = MIMEMultipart("mixed")
    _headers(msg)
    msg.attach(MIMEText("<p>Approved, thanks</p>", "html"))
    for _ in range(60):  # 900 KiB in all, under MAX_HTML_CHARS: 300,000 tags
        msg.attach(MIMEText("<p>" * 5000, "html"))
    raw = msg.as_bytes()
    reply = None

    def read() -> None:
        nonlocal reply
        reply = parse_reply(raw)

    took = _cpu_seconds(read)
    assert took < 1.5, f"{took:.1f}s for 60 parts of 5,000 tags"  # 6 s and more read whole
    assert reply is not None and _action(reply) == "complete"


def test_a_style_sheet_beyond_the_tag_limit_still_hides_what_it_hides() -> None:
    # A browser applies a sheet wherever it stands: left unread, it could hide the words above.
    hidden_later = '<p class="x">Approved</p>' + "<b>y</b>" * MAX_HTML_TAGS + "<style>.x{display:none}</style>"
    reply = _html_reply(hidden_later)

    assert "Approved" not in reply.text
    assert _action(reply) is None


# --------------------------------------------------------------------------
# Comment cleanup
# --------------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["-- ", "--"])
def test_signature_is_removed(separator: str) -> None:
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(f"Looks good, approved.\n\n{separator}\nAlice Example\nHead of No Department\n")
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Looks good, approved."
    assert "Alice Example" in reply.text


def test_metadata_block_removed() -> None:
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(f"Complete.\n\n{METADATA}\n\nRegards")
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Complete.\n\nRegards"
    assert "s3cr3t-token" not in reply.comment


def test_quoted_metadata_block_without_end_marker_is_removed_to_end() -> None:
    text = f"Fine by me\n  > {METADATA_START}\ntask: 1234\ntoken: s3cr3t-token\n"
    msg = EmailMessage()
    _headers(msg)
    msg.set_content(text)
    reply = parse_reply(msg.as_bytes())
    assert reply.comment == "Fine by me"


def test_interleaved_quote_lines_are_removed_and_blank_runs_collapsed() -> None:
    msg = EmailMessage()
    _headers(msg)
    msg.set_content("> Please reply\n\n\n\nDone\n\n\n\n\nthanks\n> quoted\n")
    assert parse_reply(msg.as_bytes()).comment == "Done\n\nthanks"


# --------------------------------------------------------------------------
# Auto replies and delivery reports
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra_headers", "subject", "reason"),
    [
        ({"Auto-Submitted": "auto-replied; owner-email=x@example.com"}, "Re: task", "auto-submitted: auto-replied"),
        ({"Auto-Submitted": "Auto-Generated"}, "Re: task", "auto-submitted: auto-generated"),
        ({"X-Autoreply": "yes"}, "Re: task", "x-autoreply"),
        ({"X-Autorespond": "Re: task"}, "Re: task", "x-autorespond"),
        ({"X-Autoresponder": "1"}, "Re: task", "x-autoresponder"),
        ({"Precedence": "bulk"}, "Re: task", "precedence: bulk"),
        ({"Precedence": "Junk"}, "Re: task", "precedence: junk"),
        ({"Precedence": "auto_reply"}, "Re: task", "precedence: auto_reply"),
        (
            {"X-MS-Exchange-Generated-Message-Source": "Mailbox Rules Agent"},
            "Re: task",
            "x-ms-exchange-generated-message-source",
        ),
        ({}, "Out of Office: [rc-mta] Approve deployment", "subject: out of office"),
        ({}, "Automatic reply: [rc-mta] Approve deployment", "subject: automatic reply"),
        ({}, "AUTO: Alice is out of the office", "subject: auto"),
        ({}, "Autoreply: away", "subject: autoreply"),
        ({}, "Abwesenheitsnotiz: [rc-mta] Approve deployment", "subject: abwesenheitsnotiz"),
        ({}, "Automatische Antwort: [rc-mta] Approve", "subject: automatische antwort"),
        ({}, "Réponse automatique : [rc-mta] Approve", "subject: reponse automatique"),
        ({}, "Respuesta automática: [rc-mta] Approve", "subject: respuesta automatica"),
        ({}, "Absence: back Monday", "subject: absence"),
    ],
)
def test_out_of_office_is_detected(extra_headers: dict[str, str], subject: str, reason: str) -> None:
    msg = EmailMessage()
    _headers(msg, subject=subject)
    for name, value in extra_headers.items():
        msg[name] = value
    msg.set_content("I am out of the office until Monday. Yes, really.")
    assert parse_reply(msg.as_bytes()).auto_reply == reason


@pytest.mark.parametrize(
    ("extra_headers", "subject"),
    [
        ({}, "Re: [rc-mta] Approve deployment"),
        ({"Auto-Submitted": "no"}, "Re: task"),
        ({"Auto-Submitted": "No ; comment"}, "Re: task"),
        ({"X-Auto-Response-Suppress": "All"}, "RE: task"),
        ({"Precedence": "first-class"}, "Re: task"),
        ({}, "Re: Automatic replies are off"),
        ({}, "Autocomplete settings"),
        ({}, "Absences next week"),
    ],
)
def test_human_reply_is_not_flagged_as_auto_reply(extra_headers: dict[str, str], subject: str) -> None:
    msg = EmailMessage()
    _headers(msg, subject=subject)
    for name, value in extra_headers.items():
        msg[name] = value
    msg.set_content("Approved")
    assert parse_reply(msg.as_bytes()).auto_reply is None


DSN = b"""\
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: tasks@rc-mta.example
Subject: Undelivered Mail Returned to Sender
Message-ID: <20240603091500.ABC@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="DSN.boundary"

This is a MIME-encapsulated message.

--DSN.boundary
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. Approved recipients: none.

--DSN.boundary
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Mon,  3 Jun 2024 09:14:59 +0200 (CEST)

Final-Recipient: rfc822; bob@corp.example
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 User unknown

--DSN.boundary
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Message-ID: <req-1234.abcdef@rc-mta.example>
Subject: [rc-mta] Approve deployment

--DSN.boundary--
"""


def test_dsn_is_detected() -> None:
    reply = parse_reply(DSN)
    assert reply.auto_reply == "delivery-status report"
    assert reply.text.startswith("This is the mail system")


def test_read_receipt_is_detected() -> None:
    raw = DSN.replace(b"report-type=delivery-status", b"report-type=disposition-notification").replace(
        b"message/delivery-status", b"message/disposition-notification"
    )
    assert parse_reply(raw).auto_reply == "disposition-notification report"


def test_delivery_status_part_nested_in_mixed_is_detected() -> None:
    raw = DSN.replace(b"multipart/report; report-type=delivery-status;", b"multipart/mixed;")
    assert parse_reply(raw).auto_reply == "delivery-status report"


def test_null_envelope_sender_marks_bounce() -> None:
    msg = EmailMessage()
    _headers(msg)
    msg.set_content("approved")
    raw = msg.as_bytes()
    assert parse_reply(raw, envelope_sender="").auto_reply == "null sender"
    assert parse_reply(raw, envelope_sender=None).auto_reply is None
    assert parse_reply(raw, envelope_sender="alice@example.com").auto_reply is None


# --------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------


def test_reply_headers_are_exposed() -> None:
    msg = EmailMessage()
    _headers(msg)
    del msg["References"]
    msg.set_content("ok")
    folded_references = b"References: <root@rc-mta.example>\r\n\t" + REQUEST_ID.encode() + b" <root@rc-mta.example>\r\n"
    reply = parse_reply(folded_references + msg.as_bytes())
    assert reply.message_id == "<reply-1@mail.example.com>"
    assert reply.from_address == "alice@example.com"
    assert reply.subject == "Re: [rc-mta] Approve deployment"
    assert reply.referenced_ids == ("req-1234.abcdef@rc-mta.example", "root@rc-mta.example")
    assert reply.message["Subject"] == "Re: [rc-mta] Approve deployment"


def test_missing_headers_give_none() -> None:
    reply = parse_reply(b"\r\nhello\r\n")
    assert reply.message_id is None
    assert reply.from_address is None
    assert reply.subject == ""
    assert reply.referenced_ids == ()
    assert reply.comment == "hello"


@pytest.mark.parametrize(
    "from_header",
    [
        b"alice@example.com, mallory@evil.example",
        b"undisclosed-recipients:;",
        b"not an address",
        b"alice@example.com)<mallory@evil.example>",
        # Control characters before the address: the two parsers disagree, so no address
        # (trimming them away, as str.strip would, must not make them agree).
        b"\x0balice@example.com",
        b"\x0calice@example.com",
        b"\x1falice@example.com",
    ],
)
def test_ambiguous_from_gives_no_address(from_header: bytes) -> None:
    raw = b"From: " + from_header + b"\r\nSubject: Re\r\n\r\nyes\r\n"
    assert parse_reply(raw).from_address is None


def test_two_from_headers_give_no_address() -> None:
    raw = b"From: alice@example.com\r\nFrom: mallory@evil.example\r\nSubject: Re\r\n\r\nyes\r\n"
    assert parse_reply(raw).from_address is None


def test_mbox_from_line_is_tolerated() -> None:
    raw = b"From alice@example.com Mon Jun  3 09:20:00 2024\nFrom: Alice <alice@example.com>\nSubject: Re\n\nDone\n"
    reply = parse_reply(raw)
    assert reply.from_address == "alice@example.com"
    assert reply.comment == "Done"


# --------------------------------------------------------------------------
# Robustness
# --------------------------------------------------------------------------


MALFORMED = [
    b"",
    b"\x00\xff\xfe garbage \x80\x81",
    b"Content-Type: multipart/mixed\r\n\r\nno boundary at all\r\n",
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\ntruncated',
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64###\r\n",
    b'Content-Type: text/plain; charset="\r\nContent-Transfer-Encoding: x-unknown\r\n\r\nbody\r\n',
    b"From: <<<@@@>>>\r\nIn-Reply-To: <<<>>>\r\nMessage-ID:\r\nSubject: =?utf-8?b?!!!?=\r\n\r\nbody",
    b"Content-Type: text/html\r\n\r\n<div class='gmail_quote'><blockquote><p>unclosed <b attr='x",
    b"Content-Type: multipart/alternative; boundary=x\r\n\r\n"
    + b"--x\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n" * 200,
    b"Subject: \xff\xfe 8-bit subject\r\nFrom: \xe9@example.com\r\n\r\n\xe9t\xe9\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_mime_does_not_raise(raw: bytes) -> None:
    reply = parse_reply(raw)
    assert isinstance(reply.text, str)
    assert isinstance(reply.comment, str)
    assert reply.comment == reply.comment.strip()


def test_truncated_multipart_still_yields_text() -> None:
    reply = parse_reply(MALFORMED[3])
    assert reply.text.strip() == "truncated"
