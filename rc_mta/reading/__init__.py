"""Reading replies as a person would: what a reply says, and what it decides.

``parse_reply`` turns raw bytes into a ``ParsedReply`` (headers, the visible body text,
the person's own words as ``comment``); ``interpret_action`` reads a decision from that
comment, or none when the words decide nothing or contradict each other. The parts:
``message`` (MIME, headers, charsets, machine mail), ``html`` (what an HTML body shows),
``comment`` (quotes, attributions, signatures, gateway banners), ``intent`` (the
decision grammar) and ``words`` (every word list, in one place).
"""

from __future__ import annotations

from .comment import MAX_TEXT_CHARS, METADATA_END, METADATA_START, REQUEST_LEADS, extract_comment
from .html import html_to_text
from .intent import answer_of, contradicts, interpret_action
from .message import ParsedReply, decode_bytes, parse_reply
from .words import DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS

__all__ = [
    "DEFAULT_COMPLETE_WORDS",
    "DEFAULT_FAIL_WORDS",
    "MAX_TEXT_CHARS",
    "METADATA_END",
    "METADATA_START",
    "REQUEST_LEADS",
    "ParsedReply",
    "answer_of",
    "contradicts",
    "decode_bytes",
    "extract_comment",
    "html_to_text",
    "interpret_action",
    "parse_reply",
]
