"""What a person's own words decide: complete, fail, or nothing (the reply is refused).

A small grammar, read clause by clause over the whole comment (top, between quotes,
bottom).  A clause is what lies between punctuation; questions are skipped. A clause
decides when it *starts* with a decision, perhaps after a few leading words ("I",
"this is", "so", "hi"):

    clause   := leading* decision rest
    decision := phrase | negator phrase          "approved" | "not approved"
    leading  := "i" | "we" | "this is" | ...     (words.LEADING_WORDS, at most four)

A negated complete word fails ("not approved", "nicht genehmigt"), unless it is a hedge
("not sure", "not done yet": no reading). A negated fail word ("don't reject") and a
phrase that is in both lists are undecidable. "No problem", "no objections" are complete
phrases of their own; the longest phrase at a place wins. Words that also mean something
else ("no changes", Spanish "si" = if) decide only when they stand alone.

Every clause is read, and one that contradicts another — or whose rest holds the
opposite decision ("OK to reject") or a negation ("Absolutely not", "Ich genehmige das
nicht"), or that is a negation alone ("Done. Not.") — makes the whole reply undecidable: a reply is
never read as the opposite of what the person meant, because a doubt refuses.
Acknowledgments ("OK", "sure", "yes") decide only when no clause puts the decision
off ("OK, I'll check tomorrow" decides nothing), and approve nothing next to a clause
with a negation that decides nothing ("Yes, but I cannot sign off on this").

Doubt takes back the decision before it. A clause that is nothing but doubt or a wait
("Not sure.", "Not really.", "Wait.", "Hold on.", "Hmm.", "Nicht sicher.", "Pas sûr.",
"No estoy seguro.", "Vänta."; words.DOUBTS) after a decision leaves none ("Approved. Not
sure."), and alone is no answer to a button; a decision in a later sentence stands ("Hmm.
Approved.").
Doubt that names what it doubts ("Approved. I'm not sure about the date though.") is about
a detail: the decision stands. "Not yet" and a hold on the decision itself ("Please hold
off on approving", "Warte mit der Freigabe") take back only a completion ("No, not yet"
fails). A correction after a decision ("Rejected. Actually, no.", "Rejected. Wait, no.")
is undecidable whichever way it goes. A question decides nothing, and one asking for the
decision ("Approved?", "Approve or not?") answers no button.

Taking it back or putting it off counts the same wherever it is said after the decision:
after a correction's opener ("Approve, or rather wait", "I mean wait", "then again maybe
not"; words.CORRECTIONS), with no punctuation ("Approved wait", "approved hmm wait"), as a
hold that names nothing ("On hold.", "Pending."), as "rather not" (words.NOT_YET: after a
no it agrees), as a time the decision waits for when a clause opens with it ("but not until
Monday", "hold until Monday", "erst nächste Woche", "noch nicht umsetzen"; words.PUT_OFF),
or as when to act right after the decision word, perhaps after its object ("Approve later",
"Approve it tomorrow", "Approve on Monday", "Approve at 5 pm", "Approve in an hour",
"Approved for Monday's release", "Genehmigt am Montag", "Approuvé lundi"; words.LATER and
``_time_at``; "Approve once QA passes", "Approve when ready", "Approve after the freeze";
``_condition_at``), as a clause that is only a time ("Approve, next sprint"), or as a
condition opening a clause in the decision's sentence ("Approve, once QA passes"; before
it: "Once QA passes, approve"). rc-mta acts the moment it reads the reply, so a decision
for later is none now. What was done before deciding is no wait ("Approved after review",
but "Approve after review" is), nor is a deadline ("Approve by Friday") or a goodbye
("Validé, à demain"). A refusal put off ("Reject on Monday", "Reject, but not until
Monday") is none either, but a no for now stays a no ("No, not before the audit",
"Rejected until the tests pass", "Not approved until the tests pass"). Chinese, Japanese
and Korean say the time inside the run ("明日承認します", "月曜日に承認"; words.CJK_LATER).
A time anywhere else qualifies something else ("Approved, I'll update the ticket later",
"Approved. The release goes out on Monday"). Doubt *before* the decision in the same
sentence is the decision's own: "Not sure, approve", "Wait, approved", "我不确定，批准" are
unclear; a filler that is only a leading word ("Hmm, approved") is none, nor is a "not
yet" ("Noch nicht getestet, aber genehmigt", "Erst einmal danke, genehmigt": it has a
subject of its own), and a sentence of doubt before the decision's sentence ("Hmm.
Approved.", "Not sure. Approved.") is thought the person had before deciding.

A decision word further on in a clause ("I cannot *approve* it", "the CAB *rejected* it")
decides nothing, but is read: beside a decision of the other side it is a second
reading, after a negation that does not stand right before it a doubt ("I do not think
we should approve"), and to a button of the other side a contradiction. A complete
word in one sentence with words of trouble ("Complete failure of the build",
"Confirmed: the build is broken") reads either way. Chinese, Japanese and Korean write
words without spaces, so a run of them is one word: read as a decision only when it is a
listed phrase, and otherwise for the decision words inside it (``_cjk_reading``).
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from . import words as button_lists  # the BUTTON_* lists, read by ``_against_button``
from .words import (
    CJK_CONTRASTS,
    CJK_DOUBT_RUNS,
    CJK_DOUBTS,
    CJK_LATER,
    CJK_NEGATIONS,
    CJK_NEGATORS,
    CLOCK_MARKS,
    CONDITIONS,
    CONTRASTS,
    CORRECTIONS,
    DECISION_NAMES,
    DEFERRALS,
    DELIBERATIONS,
    DISCLAIMER_WORDS,
    DOUBT_TRAILERS,
    DOUBTING_NEGATORS,
    DOUBTS,
    HEDGES,
    HOLDS,
    LATER,
    LATER_OBJECTS,
    LEADING_WORDS,
    NEGATORS,
    NEXT,
    NOT_CONDITIONS,
    NOT_YET,
    NUMBER_LEADS,
    ORDERS,
    POLITE_WORDS,
    PUT_OFF,
    QUANTITIES,
    SEE_YOU,
    STANDALONE_ONLY,
    TIME_LEADS,
    TIME_UNITS,
    TIME_WORDS,
    TROUBLE,
    UNIT_LEADS,
    UNTIL,
    WEAK_WORDS,
)

__all__ = ["MAX_COMMENT_CHARS", "answer_of", "contradicts", "interpret_action", "normalise", "tokens"]

#: Longest comment read for a decision (the comment itself is already bounded).
MAX_COMMENT_CHARS = 64 * 1024
#: Leading words skipped before a decision, at most.
_MAX_LEADING = 4

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})
# Sentences end at . ! ? 。 … or a line break; a question ("Approved?") decides nothing.
_SENTENCE_RE = re.compile(r"([^.!?\u3002\u2026\n]+)([.!?\u3002\u2026\n]*)")
# Clauses within a sentence: commas, semicolons, colons, brackets and spaced dashes.
_DASH_RE = re.compile(r"(?:^|\s)[-\u2013\u2014]+(?=\s|$)")
_CLAUSE_SPLIT_RE = re.compile(r"[,;:()\[\]{}\u3001\"\u201c\u201d\u00ab\u00bb]")
# "… but approved": a contrast starts a clause; so does Chinese 但 before a word, and a
# Korean word ending in -지만 ("although") ends one.
_CONTRAST_RE = re.compile(
    rf"(?<!\w)(?:{'|'.join(map(re.escape, CONTRASTS))})(?!\w)"
    rf"|(?<![^\s,])(?:{'|'.join(map(re.escape, CJK_CONTRASTS))})"
    r"|(?<=\uc9c0\ub9cc)(?=\s)"
)
# An international phone number, as signatures write them: a country code and more digits.
_PHONE_NUMBER_RE = re.compile(r"\+\d{1,3}(?:[ \t().\-/]*\d){4,}")
# After these a line break is no break inside a sentence.
_LINE_ENDS = frozenset(".!?,;:\u3002\u2026\uff01\uff1f\u3001")
_TOKEN_RE = re.compile(r"[+-]?\d+|\w+(?:'\w+)*|[^\w\s]")


class _Side(enum.Enum):
    COMPLETE = "complete"
    FAIL = "fail"
    NOTHING = "nothing"  # a decision-shaped clause that decides nothing ("not sure")
    CONFLICT = "conflict"  # undecidable: the whole reply is refused
    DEFER = "defer"  # "let me check": acknowledgments elsewhere decide nothing
    NEGATED = "negated"  # "I cannot sign off": no decision read, but a "no": no "OK" approves
    LEANS_COMPLETE = "leans complete"  # no decision, but "I'd approve it" further on in a clause
    LEANS_FAIL = "leans fail"  # no decision, but "the CAB rejected it", "I cannot approve it"


_Phrase = tuple[str, ...]
_LEANING = {_Side.COMPLETE: _Side.LEANS_COMPLETE, _Side.FAIL: _Side.LEANS_FAIL}


def normalise(text: str) -> str:
    """NFKC, case-folded, one kind of apostrophe: how every word is compared."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    return folded.replace("\u0307", "")  # Turkish "İ" folds to "i" plus a combining dot


def tokens(text: str) -> list[str]:
    """Words, numbers ("+1") and symbols (emoji) of normalised text; punctuation dropped."""
    found = []
    for token in _TOKEN_RE.findall(text):
        first = token[0]
        if first.isalnum() or first == "_" or token[-1].isdigit() or unicodedata.category(first) == "So":
            found.append(token)
    return found


@dataclass(frozen=True)
class _Vocabulary:
    """The word lists as phrases indexed by their first word, longest first."""

    decisions: dict[str, list[tuple[_Phrase, _Side]]]
    negators: dict[str, list[_Phrase]]
    leading: dict[str, list[_Phrase]]
    deferrals: dict[str, list[_Phrase]]
    trouble: dict[str, list[_Phrase]]
    weak: frozenset[_Phrase]
    doubts: dict[str, list[_Phrase]]
    not_yet: dict[str, list[_Phrase]]
    corrections: dict[str, list[_Phrase]]
    holds: dict[str, list[_Phrase]]
    names: dict[str, list[_Phrase]]
    put_off: dict[str, list[_Phrase]]
    later: dict[str, list[_Phrase]]
    conditions: dict[str, list[_Phrase]]
    not_conditions: dict[str, list[_Phrase]]
    # The decision words of Chinese, Japanese and Korean that a longer run may hold, and
    # their sides: "我不能*批准*" is one word to ``tokens``.
    cjk: re.Pattern[str] | None
    cjk_sides: dict[str, _Side]


def _index(phrases: dict[_Phrase, _Side]) -> dict[str, list[tuple[_Phrase, _Side]]]:
    index: dict[str, list[tuple[_Phrase, _Side]]] = {}
    for phrase, side in sorted(phrases.items(), key=lambda item: -len(item[0])):
        index.setdefault(phrase[0], []).append((phrase, side))
    return index


def _phrase_index(words: Sequence[str]) -> dict[str, list[_Phrase]]:
    phrases = {tuple(tokens(normalise(word))) for word in words}
    index: dict[str, list[_Phrase]] = {}
    for phrase in sorted((p for p in phrases if p), key=len, reverse=True):
        index.setdefault(phrase[0], []).append(phrase)
    return index


@functools.lru_cache(maxsize=8)
def _vocabulary(complete_words: tuple[str, ...], fail_words: tuple[str, ...]) -> _Vocabulary:
    phrases: dict[_Phrase, _Side] = {}
    for words, side in ((complete_words, _Side.COMPLETE), (fail_words, _Side.FAIL)):
        for word in words:
            phrase = tuple(tokens(normalise(word)))
            if phrase:
                # A phrase in both lists decides nothing but doubt.
                phrases[phrase] = side if phrases.get(phrase, side) is side else _Side.CONFLICT
    weak = frozenset(tuple(tokens(normalise(word))) for word in WEAK_WORDS)
    # Single-character words ("好", "不") are too common inside other words to be read there.
    cjk_sides: dict[str, _Side] = {
        phrase[0]: side
        for phrase, side in phrases.items()
        if len(phrase) == 1 and len(phrase[0]) > 1 and _is_cjk(phrase[0]) and side is not _Side.CONFLICT
    }
    cjk = None
    if cjk_sides:
        negators, decisions = (
            "|".join(map(re.escape, sorted(listed, key=len, reverse=True))) for listed in (CJK_NEGATORS, cjk_sides)
        )
        cjk = re.compile(f"({negators})?({decisions})")  # a negation right before the word, perhaps
    return _Vocabulary(
        _index(phrases),
        _phrase_index(NEGATORS),
        _phrase_index(LEADING_WORDS),
        _phrase_index(DEFERRALS),
        _phrase_index(TROUBLE),
        weak,
        _phrase_index(DOUBTS),
        _phrase_index(NOT_YET),
        _phrase_index(CORRECTIONS),
        _phrase_index(HOLDS),
        _phrase_index(DECISION_NAMES),
        _phrase_index(PUT_OFF),
        _phrase_index(LATER),
        _phrase_index(CONDITIONS),
        _phrase_index(NOT_CONDITIONS),
        cjk,
        cjk_sides,
    )


def _is_cjk(word: str) -> bool:
    """Whether ``word`` holds Chinese, Japanese or Korean letters (written without spaces
    between words, so a whole run of them is one word to ``tokens``)."""
    return any(
        "\u3040" <= char <= "\u30ff"  # hiragana, katakana
        or "\u3400" <= char <= "\u9fff"  # CJK ideographs
        or "\uac00" <= char <= "\ud7af"  # Hangul syllables
        or "\uf900" <= char <= "\ufaff"  # compatibility ideographs
        for char in word
    )


def _cjk_reading(word: str, vocab: _Vocabulary) -> tuple[set[_Side], bool]:
    """The decision words a run of Chinese, Japanese or Korean holds without being one
    ("我不能批准" holds 批准), and whether the rest of it says "not" (不, ない, 않…).

    The rule is deliberately small, since the grammar has no words inside such a run: a
    decision word inside one leans as a decision word further on in a clause does; one
    right after a negation of ``CJK_NEGATORS`` is negated as "not approved" is ("我不能批准"
    leans to fail, "不拒绝" is doubt); and any other "not" in the run (``CJK_NEGATIONS``:
    "承認しない", where it comes after the word) is doubt, which way it reaches not read,
    as ``_inside`` does for words with spaces between them."""
    if vocab.cjk is None or not _is_cjk(word):
        return set(), False
    sides: set[_Side] = set()
    rest: list[str] = []
    at = 0
    for found in vocab.cjk.finditer(word):
        side = vocab.cjk_sides[found.group(2)]
        if found.group(1):  # "不能批准": not approved; "不拒绝": doubt
            side = _Side.FAIL if side is _Side.COMPLETE else _Side.CONFLICT
        sides.add(side)
        rest.append(word[at : found.start()])
        at = found.end()
    rest.append(word[at:])
    others = "\n".join(rest)
    return sides, any(mark in others for mark in CJK_NEGATIONS)


def _starts(words: list[str], at: int, phrase: _Phrase) -> bool:
    return tuple(words[at : at + len(phrase)]) == phrase


def _phrase_at(words: list[str], at: int, vocab: _Vocabulary) -> tuple[_Phrase, _Side] | None:
    """The longest decision phrase starting at ``at``."""
    for phrase, side in vocab.decisions.get(words[at], ()):
        if _starts(words, at, phrase):
            return phrase, side
    return None


def _decision_at(words: list[str], at: int, vocab: _Vocabulary) -> tuple[_Side, int] | None:
    """The decision starting at ``at`` and where it ends, or None if there is none."""
    best: tuple[_Side, int] | None = None
    found = _phrase_at(words, at, vocab)
    if found is not None:
        best = (found[1], at + len(found[0]))
    for negator in vocab.negators.get(words[at], ()):
        after = at + len(negator)
        if not _starts(words, at, negator) or after >= len(words):
            continue
        negated = _phrase_at(words, after, vocab)
        if negated is None:
            continue
        phrase, side = negated
        end = after + len(phrase)
        if best is None or end > best[1]:
            if side is _Side.COMPLETE and negator[0] in DOUBTING_NEGATORS:
                best = (_Side.CONFLICT, end)  # "hardly approved": doubt, no decision either way
            elif side is _Side.COMPLETE:
                best = (_Side.NOTHING if len(phrase) == 1 and phrase[0] in HEDGES else _Side.FAIL, end)
            else:
                best = (_Side.CONFLICT, end)  # "don't reject": not a decision we can trust
        break
    if best is not None and best[1] == at + 1 and not _stands_alone(words, at, vocab):
        return None  # "no changes", "si puedes": not a decision
    return best


def _stands_alone(words: list[str], at: int, vocab: _Vocabulary, *, then: bool = True) -> bool:
    """Whether the word at ``at`` decides where it is: always, unless it is one of
    ``STANDALONE_ONLY``; those only at the end of the clause, before a polite word
    ("no thanks") or before another decision ("ja, genehmigt")."""
    if words[at] not in STANDALONE_ONLY:
        return True
    following = at + 1
    if following == len(words) or words[following] in POLITE_WORDS:
        return True
    found = _phrase_at(words, following, vocab) if then else None
    if found is None:
        return False
    return len(found[0]) > 1 or _stands_alone(words, following, vocab, then=False)


def _listed_at(index: dict[str, list[_Phrase]], words: list[str], at: int) -> int | None:
    """Where the longest phrase of ``index`` starting at ``at`` ends, or None."""
    for phrase in index.get(words[at], ()):
        if _starts(words, at, phrase):
            return at + len(phrase)
    return None


def _inside(words: list[str], vocab: _Vocabulary) -> set[_Side]:
    """The decisions a clause that does not start with one holds further on: "the CAB
    *rejected* it", "I *cannot approve* it" (FAIL), "Ich kann das leider *nicht freigeben*".
    A negation that does not stand right before the decision it may reach ("I do not think
    we should approve", "I would approve this if not for…"), a negated hedge ("the tests
    are not done yet") and a negated fail word are CONFLICT: which way they go is a guess.
    A disclaimer's clause ("No liability is accepted", "does not accept responsibility")
    is not read: its decision words are the lawyers', not the person's."""
    if any(word in DISCLAIMER_WORDS for word in words):
        return set()
    found: set[_Side] = set()
    negation = False
    at = 0
    while at < len(words):
        decision = _decision_at(words, at, vocab)
        if decision is not None:
            side, at = decision
            found.add(_Side.CONFLICT if side is _Side.NOTHING else side)
            continue
        after = _listed_at(vocab.negators, words, at)
        sides, negated = _cjk_reading(words[at], vocab)
        found |= sides
        negation = negation or negated or after is not None
        at = after or at + 1
    if negation and found:
        return {_Side.CONFLICT}
    return found


def _read_clause(words: list[str], vocab: _Vocabulary) -> tuple[_Side, tuple[str, ...], set[_Side]]:
    """What one clause decides (its first decision, unless the rest contradicts it), the
    words that said it (an acknowledgment such as "OK" is weak; "Approve" is an order),
    and, when it does not start with one, the decisions it holds further on (``_inside``)."""
    at = 0
    decision: tuple[_Side, int] | None = None
    for _ in range(_MAX_LEADING + 1):
        if at >= len(words):
            break
        decision = _decision_at(words, at, vocab)
        if decision is not None:
            break
        skipped = _listed_at(vocab.leading, words, at)
        if skipped is None:
            break
        at = skipped
    if decision is None:
        if _listed_at(vocab.negators, words, 0) == len(words):
            return _Side.CONFLICT, (), set()  # "Done. Not.": a negation of what was said before
        inside = _inside(words, vocab)
        # No decision: does it put one off ("I'll have a look later")?
        deferring = any(_listed_at(vocab.deferrals, words, where) is not None for where in range(len(words)))
        if deferring:
            return _Side.DEFER, (), inside
        negated = any(_listed_at(vocab.negators, words, where) is not None for where in range(len(words)))
        return (_Side.NEGATED if negated else _Side.NOTHING), (), inside
    said = words[at : decision[1]]
    side, at = decision
    if side is _Side.NOTHING:
        # "Not sure", "not done yet": doubt, which no button may take for its answer; and
        # "Not sure I can approve this" holds a decision it doubts.
        if _inside(words[at:], vocab):
            return _Side.CONFLICT, (), set()
        return side, (), {_Side.NOTHING}
    if side is _Side.CONFLICT:
        return side, (), set()
    if at < len(words) and _takes_back(said, words[at:], side, vocab):
        return _Side.CONFLICT, (), set()  # "Approved wait", "Approve later"
    while at < len(words):  # "OK to reject", "Yes I don't approve": undecidable
        later = _decision_at(words, at, vocab)
        if later is None:
            if _listed_at(vocab.negators, words, at) is not None or _cjk_reading(words[at], vocab)[1]:
                # "Absolutely not", "Ich genehmige das nicht", "Jag godkänner inte": a
                # negation after the decision may turn it around (German and the Nordic
                # languages put it there); which it reaches is not ours to guess.
                return _Side.CONFLICT, (), set()
            at += 1
            continue
        if later[0] in (_Side.CONFLICT, _Side.NOTHING) or (
            later[0] in (_Side.COMPLETE, _Side.FAIL) and later[0] is not side
        ):
            return _Side.CONFLICT, (), set()
        at = later[1]
    return side, tuple(said), set()


def _takes_back(said: list[str], rest: list[str], side: _Side, vocab: _Vocabulary) -> bool:
    """Whether the words after a decision in its own clause take it back or put it off:
    a doubt or a wait with no punctuation before it ("Approved wait", "approved hmm
    wait", ``_doubt``), or when to act right after the decision words ``said``, perhaps
    after its object ("Approve later", "Approve it tomorrow", "Approve the change on
    Monday", "Approve once QA passes"; ``_waits_at``). A time further on qualifies
    something else ("Approved and later we deploy", "Go ahead with the deploy tonight"). A
    negated decision waits for nothing: "Not approved until the tests pass" is a no now,
    as "No, not until the audit" is."""
    if _doubts(_doubt(rest, vocab), side):
        return True
    if _listed_at(vocab.negators, said, 0) is not None:
        return False
    order = said[-1] in ORDERS or tuple(said) in _ORDER_PHRASES
    starts = [0]
    if rest[0] in LATER_OBJECTS:
        starts.append(1)  # "Approve it tomorrow"
    elif rest[0] in _ARTICLES:
        starts += [2, 3]  # "Approve the change on Monday", "Approve the prod deploy after the freeze"
    return any(
        at < len(rest)
        and not (side is _Side.FAIL and rest[at] in UNTIL)  # "Rejected until the tests pass": a no for now
        and _waits_at(rest, at, vocab, order=order)
        for at in starts
    )


#: Decision phrases said as an order ("Go ahead after the freeze"), beside ``ORDERS``.
_ORDER_PHRASES = frozenset({("go", "ahead"), ("go", "for", "it"), ("ship", "it")})
#: Articles before a decision's object: "Approve *the* change on Monday".
_ARTICLES = frozenset("the this that my our your die den das le la les el il lo het de".split())
#: Most words a time's leads ("on the", "at around") or a number's quantity ("a few") take.
_MAX_TIME_LEADS = 3


def _waits_at(words: list[str], at: int, vocab: _Vocabulary, *, order: bool) -> bool:
    """Whether the words at ``at`` say when to act: a time (``LATER``, ``_time_at``) or a
    condition it waits for (``_condition_at``)."""
    return (
        _listed_at(vocab.later, words, at) is not None
        or _time_at(words, at, vocab) is not None
        or _condition_at(words, at, vocab, order=order) is not None
    )


def _time_at(words: list[str], at: int, vocab: _Vocabulary) -> int | None:
    """Where a time to act that starts at ``at`` ends, or None: "on Monday", "Monday's",
    "at 5 pm", "17:00", "in an hour", "in 2 days", "next sprint", "lundi prochain", "am
    Montag", "el lunes" (``words.TIME_LEADS`` and the lists after it). A few words ahead
    at most, so a clause is read in linear time."""
    count = len(words)
    if words[at] in UNIT_LEADS:  # "in an hour", "in a few days", "dans deux jours"
        end = at + 1
        while end < count and end <= at + _MAX_TIME_LEADS and (words[end] in QUANTITIES or words[end].isdigit()):
            end += 1
        if at + 1 < end < count and words[end] in TIME_UNITS:
            return end + 1
    if words[at] in SEE_YOU and not any(word.isdigit() for word in words[at + 1 : at + _MAX_TIME_LEADS]):
        return None  # "à demain", "a domani", "bis Montag": goodbye, not when to act
    where = at
    while where < count and where < at + _MAX_TIME_LEADS and words[where] in TIME_LEADS:
        where += 1
    if where >= count:
        return None
    later = _listed_at(vocab.later, words, where)
    if later is not None:
        return later
    word = words[where].removesuffix("'s")  # "Monday's release"
    after = words[where + 1] if where + 1 < count else None
    if after in NEXT:  # "lundi prochain", "la semana próxima"
        return where + 2
    if word in TIME_WORDS:
        return where + 1
    if word in NEXT and after is not None and after not in DOUBT_TRAILERS and after not in POLITE_WORDS:
        return where + 2  # "next sprint", "nächste Woche"; not "Approved, next please"
    # A number is a time after a lead only ("at 17:00", "on 12/3"), or as "5 pm": a phone
    # number or a version in a signature ("030 1234 5678", "4.2 1") is none.
    if word.isdigit() and len(word) <= 4 and (where > at or after in _HALF_DAYS):
        if after is not None and (after in CLOCK_MARKS or after in TIME_WORDS or (after.isdigit() and len(after) <= 4)):
            return where + 2  # "5 pm", "3rd", "3 January", "17:00", "12/3"
        if words[where - 1] in NUMBER_LEADS:
            return where + 1  # "at 5", "um 17"
    return None


_HALF_DAYS = frozenset({"am", "pm"})


def _condition_at(words: list[str], at: int, vocab: _Vocabulary, *, order: bool) -> int | None:
    """Where a condition the decision waits for opens at ``at`` ("once QA passes", "when
    ready", "after the freeze", "sobald", "dès que", "después de") ends, or None. Not
    what only looks like one ("once again", "after all", "as soon as possible"), nor, but
    after an order ("Approve after review"), what the person did before deciding
    ("Approved after review", "Genehmigt nach Rücksprache"; ``words.DELIBERATIONS``)."""
    end = _listed_at(vocab.conditions, words, at)
    if end is None or _listed_at(vocab.not_conditions, words, at) is not None:
        return None
    if not order and any(word in DELIBERATIONS for word in words[end : end + _MAX_TIME_LEADS]):
        return None
    return end


def _clauses(comment: str) -> Iterator[tuple[str, bool, int, bool]]:
    """The clauses of every sentence, each with whether it opens right after a contrast
    ("looks good, *but* wait for Bob"), its sentence's number and whether that sentence is
    a question (which decides nothing)."""
    for number, match in enumerate(_SENTENCE_RE.finditer(comment)):
        question = "?" in match.group(2)
        for n, part in enumerate(_CONTRAST_RE.split(_DASH_RE.sub(",", match.group(1)))):
            for m, clause in enumerate(_CLAUSE_SPLIT_RE.split(part)):
                yield clause, n > 0 and m == 0, number, question


def _starts_after_leading(words: list[str], vocab: _Vocabulary) -> Iterator[int]:
    """Where a clause may start once its leading words ("I'm", "please", "hmm") are
    skipped: at 0 and after each of the first few of them."""
    at = 0
    for _ in range(_MAX_LEADING + 1):
        yield at
        if at >= len(words):
            return
        skipped = _listed_at(vocab.leading, words, at)
        if skipped is None:
            return
        at = skipped


class _Doubt(enum.Enum):
    ANY = "any"  # "Not sure.", "Wait.": takes back any decision
    COMPLETION = "completion"  # "Not yet.", "Hold off on approving": takes back only a completion
    # "Later.", "On Monday.", "Not until Monday", "Only after the release": a completion
    # put off; a refusal too when a contrast opens it ("Reject, but not until Monday").
    LATER = "later"


def _doubt(words: list[str], vocab: _Vocabulary) -> _Doubt | None:
    """Whether a clause is nothing but doubt about the decision, and of which kind.

    A doubt is a clause that, after its leading words, is all of one phrase of ``DOUBTS``
    ("Not sure.", "Hmm.", "Wait.", "Nicht sicher.", "Pas sûr.", "Vänta.") or ``NOT_YET``
    ("Not yet.", "Not today.") or ``LATER`` ("Later.", "Tomorrow."), perhaps with a few
    ``DOUBT_TRAILERS`` after it ("Not sure about it though"): it names nothing else, so
    what it doubts is the decision. "Not sure about the date" names something: a doubt
    about a detail, which leaves the decision standing.
    A clause that asks to hold the decision itself ("Please hold off on approving", "Wait
    before you approve", "Warte mit der Freigabe") is a doubt about a completion too;
    a hold that names something else ("Wait for the deploy window") is none. A run of
    Chinese, Japanese or Korean holding one of ``CJK_DOUBTS`` ("等一下", "承認は保留します")
    is a doubt: what else the run says is not read."""
    if any(_is_cjk(word) and (word in CJK_DOUBT_RUNS or any(mark in word for mark in CJK_DOUBTS)) for word in words):
        return _Doubt.ANY
    if _cjk_later(words, vocab):
        return _Doubt.LATER
    for start in _openings(words, vocab):
        if start >= len(words):
            break
        # A time alone ("Later.", "Tomorrow.", "On Monday.", "Next sprint.", "Plus tard.")
        # puts a completion off as "Not yet." does.
        for end, kind in (
            (_listed_at(vocab.doubts, words, start), _Doubt.ANY),
            (_listed_at(vocab.not_yet, words, start), _Doubt.COMPLETION),
            (_listed_at(vocab.later, words, start), _Doubt.LATER),
            (_time_at(words, start, vocab), _Doubt.LATER),
        ):
            if end is not None and all(word in DOUBT_TRAILERS for word in words[end:]):
                return kind
        if _listed_at(vocab.put_off, words, start) is not None:
            return _Doubt.LATER  # "not until Monday", "erst nächste Woche", "only after the release"
        # "On Monday approve it", "Once QA passes approve": when to act, then the decision.
        timed = _time_at(words, start, vocab) or _condition_at(words, start, vocab, order=False)
        if timed is not None and any(_names_decision(words, at, vocab) for at in range(timed, len(words))):
            return _Doubt.LATER
        held = _listed_at(vocab.holds, words, start)
        if held is not None and held < len(words) and _time_at(words, held, vocab) is not None:
            return _Doubt.LATER  # "Wait until Monday", "Hold off till next week" (not "Wait for the window")
        if held is not None and any(_names_decision(words, at, vocab) for at in range(held, len(words))):
            return _Doubt.COMPLETION
    return None


def _cjk_later(words: list[str], vocab: _Vocabulary) -> bool:
    """Whether a clause of Chinese, Japanese or Korean says when to act: a run holding a
    time of ``CJK_LATER`` ("明日", "月曜日に", "下周", "내일") beside a decision word
    ("明日承認します", "月曜日に承認", "내일 승인합니다"), or nothing but such runs ("承認します、
    *月曜日に*"). A time beside other words ("明日から休暇です", on leave from tomorrow) is
    about something else."""
    if not any(_is_cjk(word) and any(mark in word for mark in CJK_LATER) for word in words):
        return False
    if all(len(_CJK_LATER_RE.sub("", word)) <= 1 for word in words):
        return True  # "月曜日に", "明日で", "来週以降": a time alone (and a particle)
    return any(_names_decision(words, at, vocab) or _cjk_reading(words[at], vocab)[0] for at in range(len(words)))


# The times of ``CJK_LATER``, longest first, to see what else a run says ("周一*上线*").
_CJK_LATER_RE = re.compile("|".join(map(re.escape, sorted(CJK_LATER, key=len, reverse=True))))


def _opens_condition(words: list[str], vocab: _Vocabulary) -> bool | None:
    """Whether, after its leading words, a clause opens with a condition the decision
    waits for ("once QA passes", "when ready", "after the freeze"): None if it does not,
    else whether it is only what was done before deciding ("after review",
    ``words.DELIBERATIONS``), which an order still waits for ("After review, approve")."""
    for start in _starts_after_leading(words, vocab):
        if start >= len(words):
            break
        if _condition_at(words, start, vocab, order=True) is not None:
            return _condition_at(words, start, vocab, order=False) is None
    return None


def _openings(words: list[str], vocab: _Vocabulary) -> Iterator[int]:
    """Where a doubt may start: after the leading words (``_starts_after_leading``), and
    after a correction's opener there ("or rather wait", "I mean wait", "then again maybe
    not", "oder lieber warten")."""
    for start in _starts_after_leading(words, vocab):
        yield start
        opened = _listed_at(vocab.corrections, words, start) if start < len(words) else None
        if opened is not None:
            yield opened


def _names_decision(words: list[str], at: int, vocab: _Vocabulary) -> bool:
    """Whether the word at ``at`` names the decision: "approving", "the approval", or a
    decision word that is no state ("wait until the backup is *done*" names none)."""
    if _listed_at(vocab.names, words, at) is not None:
        return True
    found = _phrase_at(words, at, vocab)
    return found is not None and not (len(found[0]) == 1 and found[0][0] in HEDGES)


def _doubts(doubt: _Doubt | None, last: _Side) -> bool:
    """Whether ``doubt`` takes back ``last``, the decision before it (or none): "Not
    sure" any, "Not yet" all but a no ("No, not yet")."""
    return doubt is _Doubt.ANY or (doubt in (_Doubt.COMPLETION, _Doubt.LATER) and last is not _Side.FAIL)


def _corrects(words: list[str], vocab: _Vocabulary) -> bool:
    """Whether a clause opens a correction of what was said before: it is nothing but
    the opener ("Actually, no", "Wait, no", "On second thought, approved") or the opener
    right before a decision ("Actually no"); "Wait for the window" corrects nothing."""
    for start in _starts_after_leading(words, vocab):
        end = _listed_at(vocab.corrections, words, start) if start < len(words) else None
        if end is not None and (end == len(words) or _decision_at(words, end, vocab) is not None):
            return True
    return False


def interpret_action(comment: str, complete_words: Sequence[str], fail_words: Sequence[str]) -> str | None:
    """``"complete"``, ``"fail"``, or None when the words decide nothing or contradict
    each other (then the reply is refused, never guessed).

    A line break ends a sentence ("Approved" / "Thanks"), but one a client or the person
    put inside a sentence ("I cannot" / "approve it") does not: where the next line goes on
    in lower case after no punctuation, the words are read both ways, and must agree."""
    readings = _readings(comment, tuple(complete_words), tuple(fail_words))
    if len(readings) != 1:
        return None  # line by line it says one thing, as sentences another
    [found] = readings
    return found.value if found in (_Side.COMPLETE, _Side.FAIL) else None


def answer_of(comment: str, complete_words: Sequence[str], fail_words: Sequence[str]) -> str | None:
    """The answer a reply to the address that decides from the words gives: what
    ``interpret_action`` reads, unless a button would refuse those words for that answer
    ("Yes, stop the release", "Agreed, do not deploy", "No, deploy it": they read both ways).
    The one reading the pipeline acts on, and the corpus bench measures."""
    decided = interpret_action(comment, complete_words, fail_words)
    if decided is None or contradicts(comment, decided, complete_words, fail_words):
        return None
    return decided


def contradicts(comment: str, action: str, complete_words: Sequence[str], fail_words: Sequence[str]) -> bool:
    """Whether the words, read either way, decide against ``action`` ("complete" or
    "fail") or against themselves ("Absolutely not", "Approved. Rejected."), or hold a
    decision word further on that reads against it ("Sadly I cannot approve it", "the CAB
    rejected it"): what a Complete or Fail button's reply may not say. Words that decide
    nothing and say nothing against it ("Tests are red") do not."""
    against = {"complete": (_Side.FAIL, _Side.LEANS_FAIL), "fail": (_Side.COMPLETE, _Side.LEANS_COMPLETE)}[action]
    readings = _readings(comment, tuple(complete_words), tuple(fail_words))
    if any(side is _Side.CONFLICT or side in against for side in readings):
        return True
    return _against_button(comment, action, readings, _vocabulary(tuple(complete_words), tuple(fail_words)))


# --- What a button's reply says without a decision word ---------------------------------


@dataclass(frozen=True)
class _ButtonWords:
    """``words.BUTTON_*`` as phrases indexed by their first word."""

    no_answers: dict[str, list[_Phrase]]
    no_openers: dict[str, list[_Phrase]]
    go_answers: dict[str, list[_Phrase]]
    actions: dict[str, list[_Phrase]]
    trailers: frozenset[str]


@functools.lru_cache(maxsize=1)
def _button_words() -> _ButtonWords:
    return _ButtonWords(
        _phrase_index(button_lists.BUTTON_NO_ANSWERS),
        _phrase_index(button_lists.BUTTON_NO_OPENERS),
        _phrase_index(button_lists.BUTTON_GO_ANSWERS),
        _phrase_index(button_lists.BUTTON_ACTIONS),
        DOUBT_TRAILERS | POLITE_WORDS,
    )


def _against_button(comment: str, action: str, readings: AbstractSet[_Side], vocab: _Vocabulary) -> bool:
    """Whether words the grammar reads as no decision still say the opposite of ``action``.

    To the Complete address: a clause that, after its leading words, is a no ("Definitely
    not", "I'm afraid not", "Keinesfalls"), asks to stop or undo or judges the change
    unacceptable ("Stop the release", "Roll back", "Unacceptable"), or opens with a
    negation of anything but trouble ("Do not deploy", "Not ready to ship", "I don't
    think so"; not "Don't worry", "Not bad", "I didn't find any issues"). To the Fail
    address: a clause asking for the change ("Deploy it", "Release this"), or that is a yes
    alone ("Definitely", "Green light", "Let's go") where nothing in the reply fails.
    Completing on a no starts what the task gates: a button acts only on words that do
    not say otherwise. Each clause is read once, from a bounded number of openings."""
    if not comment.strip():
        return False
    button = _button_words()
    comment = _PHONE_NUMBER_RE.sub(" ", comment[:MAX_COMMENT_CHARS])
    unwrapped = _unwrapped(comment)
    for text in (comment, unwrapped) if unwrapped is not None else (comment,):
        clauses = [(tokens(clause), number, question) for clause, _, number, question in _clauses(normalise(text))]
        # A plan for what may go wrong is no answer: "If anything goes wrong, roll back",
        # "Roll back if error rates spike" (in the sentence, a word of ``words.CONTINGENCIES``).
        contingent = {number for words, number, _ in clauses if button_lists.CONTINGENCIES.intersection(words)}
        for words, number, question in clauses:
            if question or not words:
                continue
            if action == "complete" and number not in contingent and _says_no(words, vocab, button):
                return True
            if action == "complete" and readings <= {_Side.NOTHING} and _says_when(words, vocab, button):
                return True
            if action == "fail" and _says_go(words, vocab, button, intensifier=_Side.FAIL not in readings):
                return True
        if action == "fail" and _bare_no_then_all_well(clauses, vocab, button):
            return True
        if action == "fail" and readings <= {_Side.NOTHING} and _all_well(clauses, vocab, button):
            return True
    return False


def _all_well(clauses: list[tuple[list[str], int, bool]], vocab: _Vocabulary, button: _ButtonWords) -> bool:
    """Whether every clause says nothing is wrong, or is a courtesy: "No blockers", "Nothing
    wrong with it", "I don't object, thanks" to the Fail address is a yes (found in review);
    "No errors in the log, but it hangs" is not."""
    spoken = [words for words, _, question in clauses if words and not question]
    said = [words for words in spoken if not all(word in button.trailers for word in words)]
    return bool(said) and all(_says_all_well(words, vocab) for words in said)


def _bare_no_then_all_well(
    clauses: list[tuple[list[str], int, bool]], vocab: _Vocabulary, button: _ButtonWords
) -> bool:
    """Whether the reply opens with a bare no and goes on to say nothing is wrong: "No, I
    don't have any concerns", "No, nothing blocking" answer a question about trouble, not
    the request, and failing on them was the opposite of what was meant (found in review)."""
    spoken = [words for words, _, question in clauses if words and not question]
    if len(spoken) < 2 or len(spoken[0]) != 1 or spoken[0][0] not in button_lists.BARE_NOS:
        return False
    return any(_says_all_well(words, vocab) for words in spoken[1:])


def _says_all_well(words: list[str], vocab: _Vocabulary) -> bool:
    """Whether a clause opens with a negation of trouble or a worry: "I don't have any
    concerns", "nothing blocking", "no issues" (``words.BUTTON_NEGATED_BENIGN``, ``TROUBLE``;
    "nothing" and its kin, ``words.NOTHING_WORDS``, negate what follows too)."""
    for start in _starts_after_leading(words, vocab):
        if start >= len(words):
            return False
        end = start + 1 if words[start] in button_lists.NOTHING_WORDS else _listed_at(vocab.negators, words, start)
        if end is None:
            continue
        at = end
        while at < len(words) and at - end < 6 and words[at] in button_lists.BUTTON_NEGATION_FILLERS:
            at += 1
        return at < len(words) and (
            words[at] in button_lists.BUTTON_NEGATED_BENIGN or _listed_at(vocab.trouble, words, at) is not None
        )
    return False


def _says_when(words: list[str], vocab: _Vocabulary, button: _ButtonWords) -> bool:
    """Whether a clause of a reply that decides nothing says when to act or on what
    condition: it opens with a time or a condition ("Tomorrow morning.", "Once CI is
    green.", "If CI is green.", "Pending QA."), or asks for the change at a time ("Please
    deploy tomorrow", "Go live Monday", "Do it tomorrow"). To the Complete address that is
    not now (``_against_button``)."""
    for start in _starts_after_leading(words, vocab):
        if start >= len(words):
            return False
        if _time_at(words, start, vocab) is not None or _condition_at(words, start, vocab, order=False) is not None:
            return True
        end = _listed_at(button.actions, words, start) or _listed_at(button.go_answers, words, start)
        if end is not None:
            while end < len(words) and words[end] in button_lists.BUTTON_ACTION_OBJECTS:
                end += 1
            return end < len(words) and _waits_at(words, end, vocab, order=True)
    return False


def _says_no(words: list[str], vocab: _Vocabulary, button: _ButtonWords) -> bool:
    """Whether a clause is a no, a stop or a prohibition (``_against_button``)."""
    for start in _starts_after_leading(words, vocab):
        if start >= len(words):
            return False
        if _decision_at(words, start, vocab) is not None or _listed_at(vocab.not_yet, words, start) is not None:
            return False  # "No problem", "Not approved", "Not yet tested, but approved": the grammar's to read
        end = _listed_at(button.no_answers, words, start)
        if end is not None and all(word in button.trailers for word in words[end:]):
            return True
        if _listed_at(button.no_openers, words, start) is not None:
            return True
        if _is_cjk(words[start]) and any(mark in words[start] for mark in button_lists.BUTTON_CJK_NO_MARKS):
            return True
        end = _listed_at(vocab.negators, words, start)
        if end is not None:
            return _negates_action(words, start, end, vocab, button)
    return False


def _negates_action(words: list[str], start: int, end: int, vocab: _Vocabulary, button: _ButtonWords) -> bool:
    """Whether the negation opening a clause at ``start`` (ending at ``end``) forbids or
    refuses: a determiner only before the change or the decision ("No deploy", "Keine
    Freigabe"; not "No changes needed"), any other negator unless what it negates, past
    a few fillers, is trouble or a worry ("Don't worry", "I didn't see any issues")."""
    if end - start == 1 and words[start] in button_lists.BUTTON_DETERMINERS:
        return end < len(words) and (
            _listed_at(button.actions, words, end) is not None or _listed_at(vocab.names, words, end) is not None
        )
    at = end
    while at < len(words) and at - end < 6 and words[at] in button_lists.BUTTON_NEGATION_FILLERS:
        at += 1
    if at == len(words):
        return True  # "Definitely not", "I can't", "Not at all"
    return not (words[at] in button_lists.BUTTON_NEGATED_BENIGN or _listed_at(vocab.trouble, words, at) is not None)


# Struck-through text as plain text writes it, and as ``html.render_html`` marks it.
_STRUCK_RE = re.compile(r"~~([^~\n]*)~~")


def _without_struck(comment: str, vocab: _Vocabulary) -> str | None:
    """``comment`` without its struck-through words ("~~typo~~"), or None when any of them
    decide or say which way the person leans ("~~Approved~~", "~~Deploy it~~"): struck out,
    a decision is taken back, and what replaced it, if anything, is a guess."""
    if "~~" not in comment:
        return comment
    for found in _STRUCK_RE.finditer(comment):
        span = found.group(1)
        if not span.strip():
            continue
        if _decide(normalise(span), vocab) is not _Side.NOTHING or any(
            _against_button(span, action, {_Side.NOTHING}, vocab) for action in ("complete", "fail")
        ):
            return None
    return _STRUCK_RE.sub(" ", comment)


def _says_go(words: list[str], vocab: _Vocabulary, button: _ButtonWords, *, intensifier: bool) -> bool:
    """Whether a clause asks for the change ("Deploy it", "Release this now") or, when
    ``intensifier`` (nothing in the reply fails: "Rejected, definitely" is an emphatic no),
    is a yes alone ("Definitely", "Green light")."""
    for start in _starts_after_leading(words, vocab):
        if start >= len(words):
            return False
        end = _listed_at(button.go_answers, words, start)
        if intensifier and end is not None and all(word in button.trailers for word in words[end:]):
            return True
        end = _listed_at(button.actions, words, start)
        if end is not None and (end == len(words) or words[end] in button_lists.BUTTON_ACTION_OBJECTS):
            return True
    return False


def _troubled(words: list[str], vocab: _Vocabulary) -> bool:
    """Words of trouble in the clause that no negator just before them takes back: "no
    errors", "not broken", "keine Fehler" say all is well."""
    for where in range(len(words)):
        if _listed_at(vocab.trouble, words, where) is None:
            continue
        if not any(_listed_at(vocab.negators, words, start) == where for start in range(max(0, where - 3), where)):
            return True
    return False


@functools.lru_cache(maxsize=8)
def _readings(comment: str, complete_words: tuple[str, ...], fail_words: tuple[str, ...]) -> frozenset[_Side]:
    """What the words decide, line by line and with wrapped sentences joined (one reading
    where no sentence is wrapped): each COMPLETE, FAIL, NOTHING or CONFLICT. Kept for the
    last few comments: the pipeline asks ``interpret_action`` and then ``contradicts`` of
    the same words, and the grammar is most of what either costs."""
    if "\u202d" in comment or "\u202e" in comment:
        return frozenset(
            {_Side.NOTHING}
        )  # a bidi override draws letters in another order: "\u202eApproved" shows "devorppA"
    vocab = _vocabulary(complete_words, fail_words)
    comment = _PHONE_NUMBER_RE.sub(" ", comment[:MAX_COMMENT_CHARS])  # "+1 (555) 010-0100" is no "+1"
    unstruck = _without_struck(comment, vocab)
    if unstruck is None:
        return frozenset({_Side.CONFLICT})  # "~~Approved~~": a decision struck out
    comment = unstruck
    readings = {_decide(normalise(comment), vocab)}
    unwrapped = _unwrapped(comment)
    if unwrapped is not None:
        readings.add(_decide(normalise(unwrapped), vocab))
    return frozenset(readings)


def _unwrapped(text: str) -> str | None:
    """``text`` with each line break inside a sentence made a space, or None if it has none."""
    pieces: list[str] = []
    previous = ""
    joined = False
    for line in text.split("\n"):
        plain = line.strip()
        if pieces:
            inside = previous != "" and previous[-1] not in _LINE_ENDS and plain[:1].islower()
            pieces.append(" " if inside else "\n")
            joined = joined or inside
        pieces.append(line)
        previous = plain
    return "".join(pieces) if joined else None


def _decide(text: str, vocab: _Vocabulary) -> _Side:
    """What normalised ``text`` decides: COMPLETE, FAIL, NOTHING or CONFLICT, or when it
    decides nothing but holds a decision word further on in a clause, LEANS_COMPLETE or
    LEANS_FAIL (what a button's reply may not say against it)."""
    strong: set[_Side] = set()
    weak: set[_Side] = set()
    inside: set[_Side] = set()
    deferred = negated = troubled = hedged = False
    # The sentence read, the sides its clauses hold and whether it has words of trouble.
    sentence, sides, sentence_troubled = -1, set[_Side](), False
    # Doubt after the last decision ("Approved. Not sure."), the side last decided, the
    # sentence a correction of an earlier decision opened, and whether a question asked
    # for a decision ("Approved?").
    doubted, last, correcting = False, _Side.NOTHING, -1
    # The sentence a doubt opened before any decision in it ("Not sure, approve"); "not
    # yet" there is about something else ("Not yet tested, but approved").
    doubting = -1
    # Per question, whether its last clause asks for the decision ("Approved?", "Hi,
    # approve or not?"; not "OK, could you update the docs?").
    asking: dict[int, bool] = {}
    # The sentence of the last decision, whether it was an acknowledgment ("No") or an
    # order ("Approve"); and the sentence a condition opened before any decision in it
    # ("Once QA passes, approve"), with whether it was only what was done before deciding
    # ("After review, approved").
    decided, last_weak, last_order = -1, False, False
    conditioned, deliberated = -1, False
    for clause, after_contrast, number, question in _clauses(text):
        words = tokens(clause)
        if not words:
            continue
        doubt = _doubt(words, vocab)
        condition = _opens_condition(words, vocab)
        if question:
            # "Approved?", "Approve or not?" decide nothing, but are no answer to a button;
            # "Approved... or not?" doubts what was said.
            asking[number] = _read_clause(words, vocab)[0] in (_Side.COMPLETE, _Side.FAIL, _Side.CONFLICT)
            doubted = doubted or _doubts(doubt, last)
            continue
        if last is not _Side.NOTHING and _corrects(words, vocab):
            correcting = number  # "Rejected. Actually, no.": which one stands is a guess
        side, said, further = _read_clause(words, vocab)
        acknowledgment = said in vocab.weak
        if side in (_Side.COMPLETE, _Side.FAIL):
            if correcting == number or doubting == number:
                return _Side.CONFLICT  # "Not sure, approve": the doubt is the decision's own
            order = said[-1] in ORDERS or said in _ORDER_PHRASES
            if conditioned == number and (order or not deliberated):
                return _Side.CONFLICT  # "Once QA passes, approve": not now
            doubted, last = False, side  # "Hmm. Approved.": the decision after the doubt stands
            decided, last_weak, last_order = number, acknowledgment, order
        elif doubt is _Doubt.ANY and _listed_at(vocab.leading, words, 0) != len(words):  # no filler ("Hmm, approved")
            doubting = number
        elif condition is not None:
            conditioned, deliberated = number, condition
        if side not in (_Side.COMPLETE, _Side.FAIL) and condition is not None and decided == number:
            # "Approve, once QA passes", "Yes, when ready": the decision waits in its own sentence.
            doubt = doubt or (_Doubt.LATER if last_order or not condition else None)
        if doubt is _Doubt.LATER and after_contrast and last is _Side.FAIL and not last_weak:
            return _Side.CONFLICT  # "Reject, but not until Monday" ("No, but not before the audit" agrees)
        doubted = doubted or _doubts(doubt, last)
        if side is _Side.CONFLICT or _Side.CONFLICT in further:
            return _Side.CONFLICT
        if side is _Side.DEFER and after_contrast:
            return _Side.CONFLICT  # "looks good, but wait for Bob": a condition on the decision, not one
        if side is _Side.DEFER:
            deferred = True
        elif side is _Side.NEGATED:
            negated = True
        elif side in (_Side.COMPLETE, _Side.FAIL):
            (weak if acknowledgment else strong).add(side)
        hedged = hedged or _Side.NOTHING in further
        further.discard(_Side.NOTHING)
        inside |= further
        # "Complete failure of the build", "Confirmed: the build is broken", "OK, this is
        # broken": a complete word beside words of trouble in one sentence reads either way.
        trouble = _troubled(words, vocab)
        troubled = troubled or trouble
        if number != sentence:
            sentence, sides, sentence_troubled = number, set(), False
        sides |= further | ({side} if side in (_Side.COMPLETE, _Side.FAIL) else set())
        sentence_troubled = sentence_troubled or trouble
        if _Side.COMPLETE in sides and (_Side.FAIL in sides or sentence_troubled):
            return _Side.CONFLICT
    if doubted:
        return _Side.CONFLICT  # "Approved. Not sure.", "Hold off on approving": neither way
    if len(strong | weak | inside) > 1:
        return _Side.CONFLICT  # "Approved. The CAB rejected it." reads both ways too
    unsaid = (negated or troubled) and _Side.COMPLETE in weak
    if unsaid:
        weak.discard(_Side.COMPLETE)  # "Yes, but I cannot sign off": no approval ("No, not yet" is a no)
    found = strong if deferred else strong | weak
    if found:
        return found.pop()
    if unsaid or hedged or any(asking.values()) or (deferred and weak):
        # Nor may a button take it for its answer: "Yes, but I cannot sign off" is no yes to
        # the Complete button, "Sure, why not" no no to the Fail button, "Not sure" neither,
        # nor "No, let me check first" (a no put off) or "Approved?" (asked, not said).
        return _Side.CONFLICT
    # Nothing decided, or an acknowledgment of a deferral; but words further on in a clause
    # still speak against a button: "I cannot approve it" to the Complete address.
    return _LEANING[inside.pop()] if inside else _Side.NOTHING
