"""The person's own words in a reply body: what is left without the quoted history.

Read line by line, once.  Dropped, because the person did not write them in this reply:
quoted lines (">" or a quote block of an HTML body), reply attributions ("On … wrote:"
in many languages and shapes) that introduce a quote, mail-gateway warnings, separator
lines, our own request's metadata block.  Reading stops (the rest is history or a
signature) at an Outlook-style header block ("From: … Sent: …"), an "-----Original
Message-----" style separator, an attribution followed by unquoted history, a "-- "
signature or a mobile one ("Sent from my iPhone"), or our own request quoted with no marker
(at its first sentence, the title above it dropped too).  Text written below or between
quotes is kept: each quote becomes a paragraph break.

Only the first ``MAX_TEXT_CHARS`` of the text are read, and every pattern runs on a
line of bounded length, so the work is linear in the input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .html import QUOTE_MARK
from .intent import normalise
from .words import (
    ATTRIBUTION_INTROS,
    ATTRIBUTION_VERBS,
    BANNER_CONTINUATION,
    BANNER_LABELS,
    BANNER_SENTENCES,
    BANNER_WORDS,
    HEADER_LABELS,
    MOBILE_SIGNATURES,
)

__all__ = ["MAX_TEXT_CHARS", "METADATA_END", "METADATA_START", "REQUEST_LEADS", "extract_comment"]

#: First line of the metadata block our outgoing request carries; replies quote
#: it back, and it must never be mistaken for the person's own words.
METADATA_START = "-- rc-mta request --"
#: Last line of that metadata block.
METADATA_END = "-- end of rc-mta request --"
#: The request mail's first sentence below its title, in each language it is written in
#: (``request_mail`` takes it from here). Quoted back with no marker at all, where it stands
#: the request begins: it and all below it, and the title just above it, are not the person's.
REQUEST_LEADS = {
    "en": "Your decision is needed",
    "de": "Ihre Entscheidung wird gebraucht",
    "fr": "Votre décision est attendue",
}
_LEADS = frozenset(normalise(lead) for lead in REQUEST_LEADS.values())
#: Longest text read for the comment (and so for the decision).
MAX_TEXT_CHARS = 64 * 1024

# Lines longer than these are never attributions, header labels or signatures.
_MAX_ATTRIBUTION = 400
_MAX_SHORT_LINE = 120
# Lines an attribution may be wrapped over, and a header block may span.
_ATTRIBUTION_LINES = 3
_HEADER_BLOCK_LINES = 7


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


# Chinese and Japanese verbs are glued to what precedes them ("09:14写道:").
_CJK_VERBS = [verb for verb in ATTRIBUTION_VERBS if verb[0] >= "\u3000"]
_LATIN_VERBS = [verb for verb in ATTRIBUTION_VERBS if verb not in _CJK_VERBS]
_VERB_RE = re.compile(rf"(?<!\w)(?:{_alternation(_LATIN_VERBS)})(?!\w)")
_GLUED_VERB_RE = re.compile(rf"(?:{_alternation(['wrote', 'schrieb', 'skrev', 'escribió', 'escreveu'])})$")
_INTRO_RE = re.compile(rf"(?:{_alternation(ATTRIBUTION_INTROS)})\s")
_HEADER_LABEL_RE = re.compile(
    rf"[*_\s]*({_alternation([label for labels in HEADER_LABELS.values() for label in labels])})[*_\s]*[:\uff1a]",
    re.IGNORECASE,
)
# Any header label: a word or few, no digits, then a colon ("Надіслано:", "Đã gửi:").
_ANY_LABEL_RE = re.compile(r"[*_]*[^\W\d_][^:\uff1a\d@<>]{0,23}[:\uff1a](?:\s|$)")
_LABEL_KIND = {normalise(label): kind for kind, labels in HEADER_LABELS.items() for label in labels}
_MOBILE_SIGNATURE_RE = re.compile(
    rf"(?:{'|'.join(MOBILE_SIGNATURES)})\.?\s*(?:<[^<>\s]{{1,200}}>|\[[^\[\]\s]{{1,200}}\])?", re.IGNORECASE
)
_BANNER_LABEL_RE = re.compile(rf"(?:{_alternation(BANNER_LABELS)})\s*(?:[:!\]\u3011)\-]|$)")
_BANNER_SENTENCE_RE = re.compile(_alternation(BANNER_SENTENCES))
_BANNER_LEAD = " \t*!#[(<\u26a0\ufe0f\u3010"
_TAG_OPEN, _TAG_CLOSE = "[(\u3010*<", "])\u3011*>"
_SEPARATOR_CHARS = frozenset("-_=~*\u2013\u2014\u2500\u2501\u2550\u00b7\u2022+# ")
_DASH_CHARS = frozenset("-=_~\u2013\u2014\u2500")
_SENTENCE_END = ".!?\u3002\uff01\uff1f"
# Where a text part stands in for an image: Outlook's "[cid:image001.png@01DA…]", Gmail's
# "[image: logo.png]".
_IMAGE_PLACEHOLDER_RE = re.compile(r"\[(?:cid:|image:)[^\[\]\n]{0,200}\]", re.IGNORECASE)


def extract_comment(text: str) -> str:
    """Reduce a reply body to the person's own words (see the module docstring)."""
    lines = text[:MAX_TEXT_CHARS].replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = _remove_metadata_block(lines)
    kept = _own_lines(lines)
    joined = "\n".join(line.rstrip() for line in kept)
    return re.sub(r"\n{3,}", "\n\n", joined).strip()


def _own_lines(lines: list[str]) -> list[str]:
    """Each line the person wrote, with "" where a quote, a blank or a dropped line was."""
    stripped = [line.strip() for line in lines]
    count = len(lines)
    next_content = [count] * (count + 1)  # index of the next non-blank line, for each line
    for index in range(count - 1, -1, -1):
        next_content[index] = index if stripped[index] else next_content[index + 1]

    def quote_follows(index: int) -> bool:
        following = next_content[index + 1] if index + 1 <= count else count
        return following < count and _is_quoted(stripped[following])

    def ends_here(index: int) -> bool:
        return next_content[index + 1] == count

    kept: list[str] = []
    index = 0
    while index < count:
        line, plain = lines[index], stripped[index]
        if not plain or _is_quoted(plain):
            kept.append("")
            index += 1
            continue
        if line.rstrip() == "--" or _is_mobile_signature(plain):
            break
        if _is_request_lead(plain):
            del kept[_request_top(stripped, index) :]  # the request quoted with no marker
            break
        untagged = _without_banner_tag(plain)
        if untagged != plain:
            folded = normalise(untagged[:_MAX_ATTRIBUTION])
            if not untagged or any(word in folded for word in BANNER_CONTINUATION):
                kept.append("")  # "[EXTERNAL] This message came from outside …"
                index += 1
                continue
            line = plain = untagged  # "[EXTERNAL] Approved"
        banner_end = _banner_end(stripped, index, plain)
        if banner_end > index:
            kept.extend("" for _ in range(banner_end - index))
            index = banner_end
            continue
        if _header_block_at(stripped, index):
            break
        if _is_dashed_title(plain):  # -----Original Message-----, ---- Bob wrote ----
            if quote_follows(index):
                kept.append("")
                index += 1
                continue
            break
        if _is_separator(plain) or _IMAGE_PLACEHOLDER_RE.fullmatch(plain[: _MAX_SHORT_LINE * 2]):
            kept.append("")
            index += 1
            continue
        start = _attribution_start(stripped, index)
        if start is not None:
            joined = " ".join(stripped[start : index + 1])
            if quote_follows(index) or ends_here(index):
                del kept[start:]
                kept.extend("" for _ in range(index + 1 - start))
                index += 1
                continue
            if _strong_attribution(joined):
                del kept[start:]
                break  # the unquoted history follows
        kept.append(line)
        index += 1
    return kept


def _is_request_lead(plain: str) -> bool:
    return len(plain) <= _MAX_SHORT_LINE and normalise(plain).rstrip(" .") in _LEADS


def _request_top(stripped: list[str], lead: int) -> int:
    """The first line of our request quoted with no marker, its lead sentence at ``lead``:
    the title above it, as its text part has it (the title, an underline of "=", a blank
    line) or as its HTML renders (the title, perhaps a blank line)."""
    above = lead - 1
    while above >= 0 and not stripped[above]:
        above -= 1
    if above >= 1 and _is_separator(stripped[above]):
        above -= 1  # the underline: the title is the line above it
    return max(above, 0)


def _is_quoted(plain: str) -> bool:
    return plain.startswith(">") or plain == QUOTE_MARK


def _is_mobile_signature(plain: str) -> bool:
    return len(plain) <= _MAX_SHORT_LINE and _MOBILE_SIGNATURE_RE.fullmatch(normalise(plain)) is not None


def _is_separator(plain: str) -> bool:
    """A line drawn with dashes, underscores, equals signs or stars, and nothing else."""
    return len(plain) >= 3 and set(plain) <= _SEPARATOR_CHARS


def _is_dashed_title(plain: str) -> bool:
    """A title between runs of dashes: "-----Original Message-----", "---- Bob wrote ----"."""
    if len(plain) > _MAX_ATTRIBUTION:
        return False
    left = len(plain) - len(plain.lstrip("".join(_DASH_CHARS)))
    right = len(plain) - len(plain.rstrip("".join(_DASH_CHARS)))
    inner = plain[left : len(plain) - right]
    if plain[:left] == "~~" == plain[len(plain) - right :]:
        return False  # "~~Approved~~": struck-through words, not a title (``intent._without_struck``)
    return left >= 2 and right >= 2 and any(c.isalpha() for c in inner)


# --- Reply attributions ------------------------------------------------------------


def _attribution_text(joined: str) -> str | None:
    """The attribution without its colon, if ``joined`` has the shape of one."""
    text = joined.lstrip("-\u2013\u2014_*> ").strip()  # Yahoo's "--- On … wrote:"
    if len(text) > _MAX_ATTRIBUTION or not text.endswith((":", "\uff1a")):
        return None
    body = normalise(text[:-1].rstrip())
    if not body:
        return None
    if _VERB_RE.search(body) or any(verb in body for verb in _CJK_VERBS):
        return body
    if "@" in body and _GLUED_VERB_RE.search(body):  # "…<bob@example.com>wrote:"
        return body
    last = body.split()[-1].strip("<>()[]\"'")
    if "@" in last and any(c.isdigit() for c in body):  # "2014-10-17 11:28 GMT+03:00 Bob <bob@…>:"
        return body
    return None


def _strong_attribution(joined: str) -> bool:
    """An attribution sure enough that unquoted text after it is taken for history."""
    body = _attribution_text(joined)
    if body is None or not any(c.isdigit() for c in body):
        return False
    return "@" in body or body[0].isdigit() or _INTRO_RE.match(body) is not None


def _opens_attribution(plain: str) -> bool:
    return plain[0].isdigit() or _INTRO_RE.match(normalise(plain)) is not None


def _attribution_start(stripped: list[str], end: int) -> int | None:
    """First line of the attribution ending at line ``end``, or None if there is none.

    Long attributions are wrapped ("On Mon, 3 Jun 2024, Bob <" / "bob@example.com> wrote:"):
    an earlier line joins when the next one continues it (starts in lower case, with "<"
    or an address), or when it opens one ("On …", a date) and the next one does not.
    """
    plain = stripped[end]
    if not plain.endswith((":", "\uff1a")) or len(plain) > _MAX_ATTRIBUTION:
        return None
    start = end
    while start > 0 and end - start < _ATTRIBUTION_LINES - 1:
        previous, current = stripped[start - 1], stripped[start]
        if not previous or _is_quoted(previous) or len(previous) > _MAX_ATTRIBUTION:
            break
        if previous.endswith(tuple(_SENTENCE_END)) or previous.endswith((":", "\uff1a")):
            break
        continues = current[0] in "<([\"'" or current[0].islower() or "@" in current.split()[0]
        if not continues and (_opens_attribution(current) or not _opens_attribution(previous)):
            break
        start -= 1
    if _attribution_text(" ".join(stripped[start : end + 1])) is not None:
        return start
    return None


# --- Header blocks -----------------------------------------------------------------


def _label_kind(plain: str) -> str | None:
    if not plain or not (plain[0].isalpha() or plain[0] in "*_"):
        return None
    match = _HEADER_LABEL_RE.match(plain[:_MAX_SHORT_LINE])
    return _LABEL_KIND.get(normalise(match.group(1))) if match else None


def _any_label(plain: str) -> bool:
    return _ANY_LABEL_RE.match(plain[:_MAX_SHORT_LINE]) is not None


def _unknown_header_block_at(stripped: list[str], index: int) -> bool:
    """A header block in labels of a language we do not list ("Від: … Надіслано: …",
    "De la: … Trimis: …"): a labelled line with an address, then at least two more
    labelled lines among the next four."""
    if "@" not in stripped[index][:_MAX_SHORT_LINE] or not _any_label(stripped[index]):
        return False
    following = [plain for plain in stripped[index + 1 : index + _HEADER_BLOCK_LINES] if plain][:4]
    return sum(1 for plain in following if _any_label(plain)) >= 2


def _header_block_at(stripped: list[str], index: int) -> bool:
    """Whether an Outlook-style header block ("From: … Sent: … To: … Subject: …") starts
    here: labelled lines of at least two fields, one of them the sender or the date."""
    first = _label_kind(stripped[index])
    if first is None:
        return _unknown_header_block_at(stripped, index)
    kinds = {first}
    unlabelled = 0
    for plain in stripped[index + 1 : index + _HEADER_BLOCK_LINES]:
        if not plain:
            continue
        kind = _label_kind(plain)
        if kind is None:
            unlabelled += 1  # a From: value wrapped onto the next line
            if unlabelled > 1:
                break
            continue
        kinds.add(kind)
    return (len(kinds) >= 2 and bool(kinds & {"from", "date"})) or _unknown_header_block_at(stripped, index)


# --- Gateway warnings --------------------------------------------------------------


def _without_banner_tag(plain: str) -> str:
    """The line without a gateway's leading tag ("[EXTERNAL]", "【外部メール】")."""
    if not plain or plain[0] not in _TAG_OPEN:
        return plain
    close = next((i for i, c in enumerate(plain[1:48], 1) if c in _TAG_CLOSE), None)
    if close is None:
        return plain
    inner = normalise(plain[1:close]).strip(" *")
    if inner in ("ext", "extern", "external") or any(word in inner for word in BANNER_WORDS):
        return plain[close + 1 :].lstrip(" *:-").strip()
    return plain


def _is_banner_line(plain: str) -> bool:
    folded = normalise(plain[:_MAX_ATTRIBUTION]).lstrip(_BANNER_LEAD)
    if _BANNER_SENTENCE_RE.match(folded):
        return True
    label = _BANNER_LABEL_RE.match(folded)
    return label is not None and any(word in folded for word in BANNER_WORDS)


def _banner_end(stripped: list[str], index: int, plain: str) -> int:
    """Index after the gateway warning starting at ``index`` (``index`` if there is none)."""
    if not _is_banner_line(plain):
        return index
    end, text = index + 1, plain
    while end < len(stripped) and end - index < 5:
        following = stripped[end]
        if not following:
            break
        folded = normalise(following[:_MAX_ATTRIBUTION])
        wrapped = not text.endswith(tuple(_SENTENCE_END)) and following[0].islower()
        if not wrapped and not any(word in folded for word in BANNER_CONTINUATION):
            break
        end, text = end + 1, following
    return end


# --- Our own metadata block --------------------------------------------------------


def _unquote_marker(line: str) -> str:
    return line.lstrip(" \t>").rstrip()


def _remove_metadata_block(lines: list[str]) -> list[str]:
    """Drop every METADATA_START..METADATA_END block, quoted or not, to the end if unterminated."""
    kept: list[str] = []
    inside = False
    for line in lines:
        marker = _unquote_marker(line)
        if inside:
            if marker == METADATA_END:
                inside = False
            continue
        if marker == METADATA_START:
            inside = True
            continue
        kept.append(line)
    return kept
