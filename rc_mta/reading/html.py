"""HTML bodies as the plain lines a reader sees.

Only text a person sees may decide an action or enter the comment.  HTML can
carry text no mail client shows (display:none, the hidden attribute, zero
size, white on white, <head>, <template>, ...): a preheader, a tracking
template or a crafted hidden "Approved" must not choose the words.

html.parser tokenises but does not build the tree a browser builds, so every
place where the two could disagree errs towards "hidden": the reader may drop
text a person sees (the reply then decides nothing and is refused), never read
text a person does not see.  Everything here is linear in the input size, and
input beyond ``MAX_HTML_CHARS`` is not read at all; of a body of more than
``MAX_HTML_TAGS`` tags only the markup before the next one is read (as text/plain
is read to 64 KiB), unless what is left out could hide text above it.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass, field
from html import unescape as html_unescape
from html.parser import HTMLParser

__all__ = ["MAX_HTML_CHARS", "MAX_HTML_TAGS", "QUOTE_MARK", "html_to_text", "render_html"]

#: Longest HTML body read; a longer one shows nothing (and so decides nothing).
MAX_HTML_CHARS = 1024 * 1024
#: Most tags (each "<") read of one body: html.parser and the checks here cost some 20 µs a
#: tag, so a MiB of "<b>x</b>" held a reader 4 s. A person's words come first; a reply's
#: own markup (Outlook's: 5 or 6 tags a paragraph) reaches this deep in quoted history only.
MAX_HTML_TAGS = 5000
#: A line of its own where quoted history (a blockquote, a client's quote block) was left
#: out, so the comment reader knows what follows it was written below the quote.
QUOTE_MARK = "\ue000"  # a private-use character: never whitespace, never shown
#: Around struck-through text (<s>, <del>, <strike>, ``text-decoration: line-through``), as a
#: plain-text writer marks it: a decision the person struck out is no decision
#: (``intent._without_struck``), and the comment shows it struck.
STRIKE_MARK = "~~"

_BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "blockquote",
        "center",
        "dd",
        "div",
        "dl",
        "dt",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tr",
        "ul",
    }
)
_VOID_TAGS = frozenset(
    """area base basefont bgsound br col embed frame hr image img input keygen link meta param source track
    wbr""".split()
)
# Browsers read these as raw text up to their own end tag, and never show it.
_RAW_TEXT_TAGS = frozenset({"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes"})
# Elements whose content a mail client does not show, whatever their attributes.
_HIDDEN_TAGS = frozenset("""head template noscript select datalist object video audio canvas rp svg math""".split())
_CLOSED_UNLESS_OPEN = frozenset({"details", "dialog"})
# Start tags that may appear in <head> without ending it.
_HEAD_CONTENT = frozenset("""base basefont bgsound link meta title style script noscript template""".split())
# HTML's "special" elements: an ordinary end tag never closes anything across one.
_SPECIAL_TAGS = frozenset(
    """address applet area article aside base basefont bgsound blockquote body br button caption center col
    colgroup dd details dialog dir div dl dt embed fieldset figcaption figure footer form frame frameset h1 h2 h3
    h4 h5 h6 head header hgroup hr html iframe img input keygen li link listing main marquee menu meta nav noembed
    noframes noscript object ol p param plaintext pre script search section select source style summary table
    tbody td template textarea tfoot th thead title tr track ul wbr xmp svg math""".split()
)
_DEFAULT_SCOPE = frozenset({"applet", "caption", "html", "table", "td", "th", "marquee", "object", "template"})
_TABLE_SCOPE = frozenset({"html", "table", "template"})
# End tags that close their element across special ones, unless a scope boundary intervenes.
_SCOPED_END_TAGS: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        """address article aside blockquote button center details dialog dir div dl fieldset figcaption figure
        footer header hgroup listing main menu nav ol pre search section summary ul dd dt applet marquee object
        h1 h2 h3 h4 h5 h6""".split(),
        _DEFAULT_SCOPE | {"svg", "math"},
    ),
    "p": _DEFAULT_SCOPE | {"button", "svg", "math"},
    "li": _DEFAULT_SCOPE | {"ol", "ul", "svg", "math"},
    **dict.fromkeys("td th tr tbody thead tfoot caption colgroup".split(), _TABLE_SCOPE),
    "table": frozenset({"html", "template"}),
}
# Start tags that end an open <p> (when it is the innermost element).
_P_CLOSERS = frozenset(
    """address article aside blockquote center details dialog dir div dl fieldset figcaption figure footer form
    h1 h2 h3 h4 h5 h6 header hgroup hr li dd dt listing main menu nav ol p pre search section summary table ul
    xmp""".split()
)
_QUOTE_CLASSES = ("gmail_quote", "gmail_attr", "moz-cite-prefix", "yahoo_quoted", "protonmail_quote")
# Outlook puts the quoted original *after* these markers, as siblings; so do Hotmail
# (<hr id="stopSpelling">) and Zimbra (<hr id="zwchr">).
_OUTLOOK_STOP_IDS = frozenset(
    {"divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container", "stopspelling", "zwchr"}
)
_HTML_SPACE_RE = re.compile(r"[ \t\n\r\f]+")
_HTML_SPACE = " \t\n\r\f"
# A tag name as a browser reads it (html.parser lower-cases beyond ASCII and stops at NUL).
_TAG_NAME_RE = re.compile(r"[a-zA-Z][^\t\n\r\f />\x00]*")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Deepest element nesting the reader follows; deeper HTML counts as hidden from there on.
_MAX_HTML_DEPTH = 256
_MAX_CSS_DEPTH = 64


# --- CSS, as far as it can hide text ---------------------------------------

_CSS_STRING = r""""(?:[^"\\\n]|\\(?:.|\Z))*(?:"|(?=\n)|\Z)|'(?:[^'\\\n]|\\(?:.|\Z))*(?:'|(?=\n)|\Z)"""
# Every alternative always matches once started, so scanning never backtracks.
_CSS_NOISE_RE = re.compile(r"/\*.*?(?:\*/|\Z)|<!--|-->|" + _CSS_STRING, re.S)
_CSS_STRUCTURE_RE = re.compile(r"\\(?:.|\Z)|" + _CSS_STRING + r"|[{};]", re.S)
_CSS_ESCAPE_RE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\n\r\f]?|(\n)|(.))", re.S)
_IMPORTANT_RE = re.compile(r"!\s*important\s*$")
_LENGTH_RE = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)([a-z%]*)")
# An opacity() filter's argument, up to its end or the next bracket (never past it: a run of
# "opacity(" without ")" must not be scanned again from each one).
_FILTER_OPACITY_RE = re.compile(r"opacity\(([^()]*)(\(?)")
_SCALE_ZERO_RE = re.compile(r"scale(?:x|y|z|3d)?\(\s*[+-]?[0.]+(?:e[+-]?\d+)?\s*[,)]")
# A transform function and its arguments, up to the next bracket (linear, as above).
_TRANSFORM_RE = re.compile(r"(scale(?:x|y|z|3d)?|translate(?:x|y|z|3d)?)\(([^()]*)")
_CSS_MATH = ("calc(", "min(", "max(", "clamp(", "var(", "env(", "attr(")
_CSS_SUBSTITUTIONS = ("var(", "env(", "attr(")
_CSS_URL_RE = re.compile(r"url\([^()]*\)?")
# Properties that can hide text (``_declaration_hides``): a value substituted when the page is
# drawn may be any of their hiding values.
_HIDING_PROPERTIES = frozenset(
    """display visibility content-visibility mso-hide opacity filter font-size font width height max-width
    max-height line-height clip clip-path transform zoom text-indent left top right bottom margin-left
    margin-top inset margin color -webkit-text-fill-color content list-style list-style-type quotes
    -webkit-text-security font-family unicode-bidi""".split()
)
# Fonts that draw letters as pictures: "Approved" in Wingdings is a row of symbols.
_SYMBOL_FONTS = frozenset({"symbol", "wingdings", "wingdings 2", "wingdings 3", "webdings", "marlett", "zapf dingbats"})
_CSS_STRING_RE = re.compile(_CSS_STRING, re.S)
_CSS_ATTRIBUTE_TEST_RE = re.compile(r"\[[^\[\]]*\]")
_CSS_ARGUMENTS_RE = re.compile(r"\([^()]*\)")
_NEGATING_SELECTOR_RE = re.compile(r":[-\w]*(?:not|is|where|has|matches|any)\(")
_IDENT = r"[^\s.#\[\]:>+~,()*|=^$\"'!]+"
_ID_RE = re.compile(r"#(" + _IDENT + ")")
_CLASS_RE = re.compile(r"\.(" + _IDENT + ")")
_TYPE_RE = re.compile(r"[a-zA-Z][^\s.#\[\]:>+~,()*|=^$\"'!]*")
# Pixels per unit, for deciding whether a font is too small to read (em and % assume 16px).
_PX_PER_UNIT = {
    "": 1.0,
    "px": 1.0,
    "pt": 4 / 3,
    "pc": 16.0,
    "in": 96.0,
    "cm": 37.8,
    "mm": 3.78,
    "q": 0.945,
    "em": 16.0,
    "rem": 16.0,
    "ex": 8.0,
    "ch": 8.0,
    "cap": 11.0,
    "ic": 16.0,
    "lh": 16.0,
    "rlh": 16.0,
    "%": 0.16,
    "vw": 3.0,
    "vh": 3.0,
    "vmin": 3.0,
    "vmax": 3.0,
}
_HEX_COLOUR_RE = re.compile(r"#?(?:[0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8})")
_Colour = tuple[float, float, float, float]
# The named colours that matter here: every near-white one, and the common dark ones.
_NAMED_COLOURS: dict[str, _Colour] = {
    name: (int(rgb[0:2], 16), int(rgb[2:4], 16), int(rgb[4:6], 16), 1.0)
    for name, _, rgb in (
        pair.partition(":")
        for pair in """white:ffffff snow:fffafa ivory:fffff0 ghostwhite:f8f8ff whitesmoke:f5f5f5 seashell:fff5ee
        floralwhite:fffaf0 mintcream:f5fffa azure:f0ffff aliceblue:f0f8ff honeydew:f0fff0 lavenderblush:fff0f5
        oldlace:fdf5e6 linen:faf0e6 cornsilk:fff8dc lightyellow:ffffe0 beige:f5f5dc lightcyan:e0ffff
        lavender:e6e6fa mistyrose:ffe4e1 black:000000 gray:808080 grey:808080 silver:c0c0c0 red:ff0000
        maroon:800000 green:008000 navy:000080 blue:0000ff purple:800080""".split()
    )
}
_NAMED_COLOURS["transparent"] = (0.0, 0.0, 0.0, 0.0)


def _strip_css_noise(css: str) -> str:
    """Drop comments and the <!-- --> markers CSS ignores, leaving strings alone."""
    return _CSS_NOISE_RE.sub(lambda m: m.group() if m.group()[0] in "\"'" else " ", css)


def _css_unescape(text: str) -> str:
    """Decode CSS escapes, since ``n\\6f ne`` means ``none`` to a browser."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            code = int(match.group(1), 16)
            return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"
        return "" if match.group(2) else match.group(3)

    return _CSS_ESCAPE_RE.sub(replace, text)


def _declarations(block: str) -> list[tuple[str, str]]:
    """``name: value`` pairs of a declaration block, lower-cased, ``!important`` dropped."""
    found: list[tuple[str, str]] = []
    for part in block.split(";"):
        name, colon, value = part.partition(":")
        if colon:
            value = _IMPORTANT_RE.sub("", _css_unescape(value).strip().lower()).strip()
            found.append((_css_unescape(name).strip().lower(), value))
    return found


def _length(token: str) -> tuple[float, str] | None:
    match = _LENGTH_RE.fullmatch(token)
    return (float(match.group(1)), match.group(2)) if match else None


def _too_small_font(value: str) -> bool:
    """A font size no one can read; a size computed by a formula counts as too small."""
    first = value.split()[0] if value.split() else ""
    if any(function in value for function in _CSS_MATH):
        return True
    length = _length(first)
    if length is None:
        return False  # a keyword such as "small", or not a size at all
    number, unit = length
    return number <= 0 or number * _PX_PER_UNIT.get(unit, 16.0) < 2


def _font_families(name: str, value: str) -> list[str]:
    """The font names a ``font-family`` lists; of a ``font`` shorthand, its first family's
    last one to three words too, for where an unquoted name starts is not told."""
    families = value.split(",")
    found = [family.strip(" \t\n\r\f\"'") for family in families]
    if name == "font":
        first = families[0]
        quote = min((i for i in (first.find("'"), first.find('"')) if i >= 0), default=-1)
        words = first.split()
        found += [first[quote:].strip(" \t\n\r\f\"'")] if quote >= 0 else [" ".join(words[-k:]) for k in (1, 2, 3)]
    return found


def _transform_hides(function: str, arguments: str) -> bool:
    """A scale() that shrinks text below a readable size (an eighth: 2px of 16px), or a
    translate() that moves it 500px or more away."""
    for argument in re.split(r"[\s,]+", arguments.strip()):
        length = _length(argument)
        if length is None:
            continue
        number, unit = length
        if function.startswith("scale") and abs(number / 100 if unit == "%" else number) < 0.125:
            return True
        if function.startswith("translate") and unit != "%" and abs(number) * _PX_PER_UNIT.get(unit, 16.0) >= 500:
            return True
    return False


def _is_font_size(token: str) -> bool:
    length = _length(token)
    return length is not None and (length[1] != "" or length[0] == 0)


def _almost_transparent(value: str) -> bool:
    first = value.split()[0] if value.split() else ""
    if any(function in value for function in _CSS_MATH):
        return True
    length = _length(first)
    if length is None:
        return False
    number, unit = length
    return (number / 100 if unit == "%" else number) <= 0.05


def _parse_colour(value: str, *, hashless: bool = True) -> _Colour | None:
    """A CSS colour as (r, g, b, alpha); None if it is not one we can read.

    Mail is mostly rendered in quirks mode, where ``color: ffffff`` is white too.
    """
    text = value.strip().lower()
    if text in _NAMED_COLOURS:
        return _NAMED_COLOURS[text]
    if _HEX_COLOUR_RE.fullmatch(text) and (hashless or text.startswith("#")):
        digits = text.lstrip("#")
        if len(digits) <= 4:
            digits = "".join(c * 2 for c in digits)
        channels = [int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)]
        return (channels[0], channels[1], channels[2], channels[3] / 255 if len(channels) == 4 else 1.0)
    match = re.fullmatch(r"(rgba?|hsla?)\((.*)\)", text, re.S)
    if not match:
        return None
    args = [a for a in re.split(r"[\s,/]+", match.group(2).strip()) if a]
    if len(args) not in (3, 4):
        return None
    numbers = []
    for arg in args:
        parsed = _LENGTH_RE.fullmatch(arg)
        if not parsed or parsed.group(2) not in ("", "%", "deg"):
            return None
        numbers.append(float(parsed.group(1)) * (2.55 if parsed.group(2) == "%" else 1.0))
    alpha = 1.0
    if len(args) == 4:
        alpha = numbers[3] / 255 if args[3].endswith("%") else numbers[3]
    if match.group(1).startswith("rgb"):
        return (numbers[0], numbers[1], numbers[2], alpha)
    red, green, blue = colorsys.hls_to_rgb((numbers[0] % 360) / 360, numbers[2] / 255, numbers[1] / 255)
    return (red * 255, green * 255, blue * 255, alpha)


def _legacy_colour(value: str) -> _Colour | None:
    """An HTML colour attribute (``<font color>``, ``bgcolor``) read the way browsers do."""
    text = value.strip(_HTML_SPACE)
    lowered = text.lower()
    if not text or lowered == "transparent":
        return None
    if lowered in _NAMED_COLOURS:
        return _NAMED_COLOURS[lowered]
    if re.fullmatch(r"#[0-9a-fA-F]{3}", text):
        return _parse_colour(text)
    digits = re.sub(r"[\U00010000-\U0010ffff]", "00", text)[:128].lstrip("#")
    digits = re.sub(r"[^0-9a-fA-F]", "0", digits)
    while not digits or len(digits) % 3:
        digits += "0"
    size = len(digits) // 3
    parts = [digits[i * size : (i + 1) * size][-8:] for i in range(3)]
    while len(parts[0]) > 2 and all(part[0] == "0" for part in parts):
        parts = [part[1:] for part in parts]
    red, green, blue = (int(part[:2], 16) for part in parts)
    return (red, green, blue, 1.0)


def _background(declarations: list[tuple[str, str]]) -> _Colour | None:
    """The element's own background colour; None if it has none or one we cannot read (an image)."""
    colour: _Colour | None = None
    for name, value in declarations:
        if name == "background-color":
            colour = _parse_colour(value, hashless=False)
        elif name == "background":
            tokens = re.findall(r"[a-z-]+\([^()]*\)|#[0-9a-f]+|[a-z-]+", value)
            colour = next((c for t in tokens if (c := _parse_colour(t, hashless=False)) is not None), None)
            if "url(" in value or "gradient(" in value:
                colour = None
    return colour


def _invisible_colour(colour: _Colour, background: _Colour | None) -> bool:
    """Text in this colour cannot be seen: transparent, its own background's colour, or
    white-ish on anything but a dark background set on the same element."""
    red, green, blue, alpha = colour
    if alpha < 0.1:
        return True
    opaque_background = background is not None and background[3] >= 0.9
    if opaque_background and background is not None:
        if max(abs(red - background[0]), abs(green - background[1]), abs(blue - background[2])) <= 24:
            return True
        if min(background[:3]) < 224:
            return False
    return min(red, green, blue) >= 224


def _declaration_hides(name: str, value: str, clipped: bool, background: _Colour | None) -> bool:
    """Whether one declaration makes an element's text invisible (see ``_style_hides``)."""
    words = value.split()
    first = words[0] if words else ""
    if name in _HIDING_PROPERTIES and any(function in value for function in _CSS_SUBSTITUTIONS):
        return True  # a value known only when the page is drawn ("display: var(--x)")
    if name == "content":  # on ::before and ::after: text the person sees and the reader does not
        return value not in ("", "none", "normal", '""', "''")
    if name in ("list-style", "list-style-type", "quotes"):  # a string marker or quote ("Not ") is text too
        return any(quote in _CSS_URL_RE.sub("", value) for quote in "\"'")
    if name == "-webkit-text-security":  # letters drawn as discs
        return first != "none"
    if name == "unicode-bidi":  # "Approved" drawn backwards
        return "override" in value
    if name in ("font-family", "font") and not _SYMBOL_FONTS.isdisjoint(_font_families(name, value)):
        return True
    if name == "display":
        return first == "none"
    if name == "visibility":
        return first in ("hidden", "collapse")
    if name == "content-visibility":
        return first == "hidden"
    if name == "mso-hide":  # Outlook's own "display:none"
        return first == "all"
    if name == "opacity":
        return _almost_transparent(value)
    if name == "filter":
        # Every opacity() applies; one holding another function is read as the worst.
        return any(
            nested or _almost_transparent(argument or "0") for argument, nested in _FILTER_OPACITY_RE.findall(value)
        )
    if name == "font-size":
        return _too_small_font(value)
    if name == "font":  # the size is the token before "/line-height", else the one with a unit
        before_slash = value.split("/")[0].split()
        sizes = before_slash[-1:] if "/" in value else [t for t in before_slash if _is_font_size(t)]
        return any(_too_small_font(size) for size in sizes) or any(f in value for f in _CSS_MATH)
    if name in ("width", "height", "max-width", "max-height", "line-height"):
        if any(function in value for function in _CSS_MATH):
            return True
        length = _length(first)
        if length is None:
            return False
        number, unit = length
        if name == "line-height":
            return clipped and number <= 0
        return number <= 0 or (clipped and number * _PX_PER_UNIT.get(unit, 16.0) <= 1)
    if name == "clip":
        return "rect(" in value
    if name == "clip-path":
        return first not in ("", "none")
    if name == "transform":
        return _SCALE_ZERO_RE.search(value) is not None or any(
            _transform_hides(function, argument) for function, argument in _TRANSFORM_RE.findall(value)
        )
    if name == "zoom":  # Chromium and the webmails built on it apply it: a dot of text
        length = _length(first)
        return length is not None and (length[0] / 100 if length[1] == "%" else length[0]) < 0.125
    if name in ("text-indent", "left", "top", "right", "bottom", "margin-left", "margin-top"):
        length = _length(first)
        return length is not None and length[0] * _PX_PER_UNIT.get(length[1], 16.0) <= -500
    if name in ("inset", "margin"):  # shorthands: any side moved 500px or more away
        lengths = [length for word in words if (length := _length(word)) is not None]
        return any(number * _PX_PER_UNIT.get(unit, 16.0) <= -500 for number, unit in lengths)
    if name in ("color", "-webkit-text-fill-color"):
        colour = _parse_colour(value)
        if colour is None:
            return "(" in value  # a colour function we cannot read: assume the worst
        return _invisible_colour(colour, background)
    return False


def _style_hides(declarations: list[tuple[str, str]], clipped: bool = False) -> bool:
    """Whether these declarations hide an element's text: not displayed, invisible,
    transparent, too small, clipped away, off-screen, or coloured like the background.

    Any hiding declaration counts, even one a later declaration overrides, and a
    child cannot make visible what its parent hid: doubt is read as hidden.
    """
    clipped = clipped or _clips(declarations)
    background = _background(declarations)
    return any(_declaration_hides(name, value, clipped, background) for name, value in declarations)


def _strikes(declarations: list[tuple[str, str]]) -> bool:
    """Whether these declarations draw a line through the text (``text-decoration``)."""
    return any(
        "line-through" in value for name, value in declarations if name in ("text-decoration", "text-decoration-line")
    )


_STRIKING_TAGS = frozenset({"s", "strike", "del"})


def _attributes_strike(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    """Whether an element draws its text struck through: by its tag or its own style."""
    return tag in _STRIKING_TAGS or any(
        name == "style" and value and _strikes(_declarations(_strip_css_noise(value))) for name, value in attrs
    )


def _clips(declarations: list[tuple[str, str]]) -> bool:
    """Whether these declarations cut off what overflows the element's box."""
    return any(
        value.split()[:1] in (["hidden"], ["clip"])
        for name, value in declarations
        if name in ("overflow", "overflow-x", "overflow-y")
    )


def _attributes_hide(tag: str, attrs: list[tuple[str, str | None]], clipped: bool = False) -> bool:
    """Whether an element's own attributes hide it (every copy of a repeated attribute counts);
    ``clipped``: a style sheet may cut off its overflow."""
    names = {name for name, _value in attrs}
    if "hidden" in names or (tag in _CLOSED_UNLESS_OPEN and "open" not in names):
        return True
    if tag == "bdo" and not any(n == "dir" and (v or "").strip(_HTML_SPACE).lower() == "ltr" for n, v in attrs):
        return True  # its text drawn right to left, letter by letter: backwards
    background = next((_legacy_colour(v) for n, v in attrs if n == "bgcolor" and v), None)
    for name, value in attrs:
        if value is None:
            continue
        if name == "style" and _style_hides(_declarations(_strip_css_noise(value)), clipped):
            return True
        if (name, tag) in (("color", "font"), ("color", "basefont"), ("text", "body")):
            colour = _legacy_colour(value)
            if colour is not None and _invisible_colour(colour, background):
                return True
    return False


# What an element paints its text with and under: a colour, None (unreadable: an image,
# a formula), or _INHERITED where the element sets nothing and its parent's shows through.
_INHERITED = "inherited"
_Shade = _Colour | str | None
# Every colour an element's text may have and every background it may be drawn on: a style
# sheet's rule may or may not apply (``_StyleSheet``), so each one it could apply adds one.
_Paint = tuple[tuple[_Shade, ...], tuple[_Shade, ...]]
# Most shades an element may have of each kind; one that could have more counts as hidden.
_MAX_SHADES = 8
# Most rules (and selectors of rules that hide or paint) read from a message's style sheets;
# an Outlook reply has some hundreds, mostly its lists'. More hide everything.
_MAX_CSS_RULES = 20_000


def _behind(background: _Shade) -> _Shade:
    """A background as far as it hides text: see-through shows what is under it, unknown."""
    if isinstance(background, tuple) and background[3] < 0.9:
        return _INHERITED if background[3] < 0.1 else None
    return background


def _own_paint(tag: str, attrs: list[tuple[str, str | None]]) -> tuple[_Shade, _Shade]:
    """The text colour and background an element's own attributes set (its inline style,
    ``<font color>``, ``bgcolor``, ``<body text>``); the last one written counts."""
    colour: _Shade = _INHERITED
    background: _Shade = _INHERITED
    for name, value in attrs:
        if value is None:
            continue
        if name == "bgcolor":
            background = _legacy_colour(value)
        elif (name, tag) in (("color", "font"), ("color", "basefont"), ("text", "body")):
            colour = _legacy_colour(value)
        elif name == "style":
            for declaration, setting in _declarations(_strip_css_noise(value)):
                if declaration in ("color", "-webkit-text-fill-color"):
                    colour = _parse_colour(setting)
                elif declaration in ("background", "background-color"):
                    background = _background([(declaration, setting)])
    return colour, _behind(background)


def _rule_shades(declarations: list[tuple[str, str]]) -> tuple[list[_Shade], list[_Shade]]:
    """Every text colour and background a style sheet's rule sets (any of them may show)."""
    colours: list[_Shade] = []
    backgrounds: list[_Shade] = []
    for name, value in declarations:
        if name in ("color", "-webkit-text-fill-color"):
            colours.append(_parse_colour(value))
        elif name in ("background", "background-color"):
            backgrounds.append(_behind(_background([(name, value)])))
    return colours, backgrounds


def _add_shades(shades: tuple[_Shade, ...], added: list[_Shade], inherited: tuple[_Shade, ...]) -> tuple[_Shade, ...]:
    """``shades`` and ``added`` (one of them _INHERITED: the parent's shades) without repeats."""
    merged = dict.fromkeys(shades)
    for shade in added:
        merged.update(dict.fromkeys(inherited if shade == _INHERITED else (shade,)))
    return tuple(merged)


def _same_colour(paint: _Paint) -> bool:
    """Text that may be drawn in its background's own colour, both known (the background opaque)."""
    colours, backgrounds = paint
    if len(colours) == len(backgrounds) == 1:  # the usual case, without a style sheet's colours
        colour, background = colours[0], backgrounds[0]
        if not isinstance(colour, tuple) or not isinstance(background, tuple):
            return False
        return max(abs(colour[0] - background[0]), abs(colour[1] - background[1]), abs(colour[2] - background[2])) <= 24
    return any(
        max(abs(colour[i] - background[i]) for i in range(3)) <= 24
        for colour in colours
        if isinstance(colour, tuple)
        for background in backgrounds
        if isinstance(background, tuple)
    )


def _element_keys(tag: str, attrs: list[tuple[str, str | None]]) -> list[str]:
    """What a style sheet's rule may be keyed on for this element (see ``_selector_key``)."""
    keys = [tag, "*"]
    for name, value in attrs:
        if value and name == "id":
            keys.append("#" + value.strip(_HTML_SPACE).lower())
        elif value and name == "class":
            keys.extend("." + css_class for css_class in value.lower().split())
    return keys


# Characters that are a selector's syntax where they are not escaped.
_SELECTOR_SYNTAX = frozenset(" \t\n\r\f.#[]:>+~,()*|=^$\"'!&\\")


def _selector_key(selector: str) -> str:
    """What every element a selector matches has: ``#id`` or ``.class`` of its last compound,
    else its type; ``*`` where that is not known (a negation, ``*``, an attribute alone, a
    namespace, an escaped syntax character)."""
    if any(_css_unescape(escape.group()) in _SELECTOR_SYNTAX for escape in _CSS_ESCAPE_RE.finditer(selector)):
        return "*"
    # Arguments and attribute tests may hold anything ("#x", spaces): they only narrow it down.
    bare = _CSS_STRING_RE.sub("''", selector)
    bare = _css_unescape(_CSS_ARGUMENTS_RE.sub("()", _CSS_ATTRIBUTE_TEST_RE.sub("[]", bare))).strip().lower()
    if _NEGATING_SELECTOR_RE.search(bare) or re.search(r"[\[\]()]", bare.replace("[]", "").replace("()", "")):
        return "*"  # a negation, or nested or unclosed brackets
    compound = re.split(r"[\s>+~]+", bare)[-1].split("::")[0]
    if "|" in compound:
        return "*"
    if found := _ID_RE.search(compound):
        return "#" + found.group(1)
    if found := _CLASS_RE.search(compound):
        return "." + found.group(1)
    if (found := _TYPE_RE.match(compound)) is not None:
        return found.group()
    return "*"  # "*", "[attr]", ":first-child": could be anything


@dataclass
class _StyleSheet:
    """What the message's own style sheets hide and paint, over-approximated so it can be
    checked per element in constant time: a rule applies to every element that has the id,
    the first class, or else the type of its selector's last compound (``_selector_key``),
    and to every element where that is not known."""

    hide_all: bool = False
    hiding: set[str] = field(default_factory=set)  # keys of rules that hide
    clipping: set[str] = field(default_factory=set)  # keys of rules that cut off overflow
    striking: set[str] = field(default_factory=set)  # keys of rules that strike text through
    shades: dict[str, tuple[list[_Shade], list[_Shade]]] = field(default_factory=dict)  # key: colours, backgrounds
    rules: int = 0

    # Each takes an element's ``_element_keys``.
    def hides(self, keys: list[str]) -> bool:
        return bool(self.hiding) and any(key in self.hiding for key in keys)

    def clips(self, keys: list[str]) -> bool:
        return bool(self.clipping) and any(key in self.clipping for key in keys)

    def strikes(self, keys: list[str]) -> bool:
        return bool(self.striking) and any(key in self.striking for key in keys)

    def paint(self, keys: list[str]) -> tuple[list[_Shade], list[_Shade]]:
        """Every colour and background the rules that may apply to this element set."""
        colours: list[_Shade] = []
        backgrounds: list[_Shade] = []
        if self.shades:
            for key in keys:
                if key in self.shades and len(colours) + len(backgrounds) <= 2 * _MAX_SHADES:
                    colours.extend(self.shades[key][0])
                    backgrounds.extend(self.shades[key][1])
        return colours, backgrounds

    def add_css(self, css: str) -> None:
        """Read one style sheet's rules, nested ones (``@media``) included."""
        css = _strip_css_noise(css)
        if "@import" in _css_unescape(css).lower():
            self.hide_all = True  # rules we cannot see
        frames: list[tuple[str, list[str]]] = []  # (prelude, declaration text) of each open block
        segment = boundary = 0
        for match in _CSS_STRUCTURE_RE.finditer(css):
            token = match.group()
            if token == ";":
                boundary = match.end()
            elif token == "{":
                if frames:
                    frames[-1][1].append(css[segment : match.start()])
                if len(frames) >= _MAX_CSS_DEPTH:
                    self.hide_all = True
                    return
                frames.append((css[boundary : match.start()], []))
                segment = boundary = match.end()
            elif token == "}" and frames:
                prelude, parts = frames.pop()
                parts.append(css[segment : match.start()])
                self._add_rule(prelude, "".join(parts), frames[-1][0] if frames else "")
                segment = boundary = match.end()
        while frames:  # the end of a style sheet closes every open block
            prelude, parts = frames.pop()
            parts.append(css[segment:])
            self._add_rule(prelude, "".join(parts), frames[-1][0] if frames else "")
            segment = len(css)

    def _add_rule(self, prelude: str, block: str, parent: str) -> None:
        self.rules += 1
        if self.rules > _MAX_CSS_RULES:
            self.hide_all = True
            return
        selectors = _css_unescape(prelude).strip().lower()
        declarations = _declarations(block)
        if selectors.startswith("@"):
            if selectors.startswith("@font-face") and any(name == "src" for name, _ in declarations):
                self.hide_all = True  # a downloaded font can draw any text as anything
            if selectors.startswith("@counter-style"):
                self.hide_all = True  # list markers of any words
            return
        # A rule may meet an overflow cut-off set anywhere else: judged as if it did.
        hides, clips = _style_hides(declarations, clipped=True), _clips(declarations)
        strikes = _strikes(declarations)
        colours, backgrounds = _rule_shades(declarations)
        # One more than is kept tells "too many": each selector then costs the same, whatever
        # the block holds (selectors x declarations was quadratic on one long rule).
        colours, backgrounds = colours[: _MAX_SHADES + 1], backgrounds[: _MAX_SHADES + 1]
        if not (hides or colours or backgrounds or clips or strikes):
            return
        if "keyframes" in _css_unescape(parent).lower():
            self.hide_all = True  # an animation that may end invisible
            return
        self.rules += prelude.count(",")  # each selector of a list counts as a rule
        if self.rules > _MAX_CSS_RULES:
            self.hide_all = True
            return
        for selector in prelude.split(","):  # a comma inside brackets leaves them unclosed: "*"
            key = _selector_key(selector)
            if hides:
                self.hiding.add(key)
            if clips:
                self.clipping.add(key)
            if strikes:
                self.striking.add(key)
            if colours or backgrounds:
                known = self.shades.setdefault(key, ([], []))
                known[0].extend(colours)
                known[1].extend(backgrounds)
                if len(known[0]) > _MAX_SHADES or len(known[1]) > _MAX_SHADES:
                    self.hiding.add(key)  # too many to compare: whatever has it counts as hidden
                    del known[0][_MAX_SHADES:], known[1][_MAX_SHADES:]
        if self.hiding & {"*", "html", "body"}:
            self.hide_all = True


# --- Reading the markup ------------------------------------------------------


_MARKUP_TAG_RE = re.compile(r"<[^<>]*>")
_STYLE_PASS_NEEDED_RE = re.compile(r"<(?:style|link|body|html)|\[if", re.IGNORECASE)


class _MarkupReader(HTMLParser):
    """html.parser, plus the checks that keep it from reading markup differently from a
    browser where that would reveal hidden text; a reader that gives up sets ``unsure``."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self._line_starts = [0, *(m.end() for m in re.finditer("\n", html))]
        self.unsure = False

    def read(self) -> None:
        """Parse all of ``html``; an unfinished construct at the end shows nothing.

        html.parser's close() re-scans an unfinished tag, comment or ``</`` once per
        character (quadratic on hostile input), and then shows it as text where a
        browser shows nothing, so the unfinished rest is dropped instead.
        """
        try:
            self.feed(self.html)
            if not self.html.startswith("<", self.position()):
                self.close()
        except Exception:
            self.unsure = True  # html.parser gave up on hostile markup

    def position(self) -> int:
        """Offset in ``html`` of the construct being handled."""
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def written_start_tag(self) -> str:
        """The start tag's name as a browser reads it (ASCII case-folding only)."""
        found = _TAG_NAME_RE.match(self.html, self.position() + 1)
        return found.group().translate(_ASCII_LOWER) if found else ""

    def written_end_tag(self) -> str | None:
        """The end tag's name as a browser reads it, or None where a browser sees no end
        tag at all (``</ div>``, ``</div\\0>``): it takes those for comments."""
        start = self.position()
        found = _TAG_NAME_RE.match(self.html, start + 2)
        if not self.html.startswith("</", start) or found is None:
            return None
        if self.html[found.end() : found.end() + 1] not in ("\t", "\n", "\f", "\r", " ", "/", ">"):
            return None
        return found.group().translate(_ASCII_LOWER)

    def unread_start_tag(self) -> bool:
        """Whether html.parser passed a start tag it could not parse on as text."""
        start = self.position()
        following = self.html[start + 1 : start + 2]
        return self.html.startswith("<", start) and following.isascii() and following.isalpha()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # "<div/>" opens a div that stays open: HTML ignores the slash.
        self.handle_starttag(tag, attrs)


class _StyleCollector(_MarkupReader):
    """First pass: the style sheets, and whatever hides the whole message."""

    def __init__(self, html: str) -> None:
        super().__init__(html)
        self.sheet = _StyleSheet()
        self._css: list[str] | None = None
        self._foreign = False  # an <svg> or <math> began: a <style> may be one of theirs

    def collect(self) -> _StyleSheet:
        self.read()
        if self.unsure or self._css is not None:
            self.sheet.hide_all = True
        return self.sheet

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.written_start_tag() == "style":
            self.sheet.hide_all = True  # html.parser would read its rules as markup
        self.handle_starttag(tag, attrs)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        name = self.written_start_tag()
        self._foreign = self._foreign or name in ("svg", "math")
        if name == "style":
            self._css = []
        elif name == "link" and any(n == "rel" and v and "stylesheet" in v.lower() for n, v in attrs):
            self.sheet.hide_all = True  # rules we cannot see
        elif name in ("html", "body") and _attributes_hide(name, attrs):
            self.sheet.hide_all = True  # their attributes apply wherever the tag appears

    def handle_data(self, data: str) -> None:
        if self._css is not None:
            self._css.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._css is None or tag != "style":
            return
        if self.written_end_tag() != "style":
            self.sheet.hide_all = True  # html.parser ended the style sheet where a browser does not
        css = "".join(self._css)
        self.sheet.add_css(css)
        if self._foreign:
            # SVG's <style> holds markup, not raw text: a browser decodes "&#46;x" to ".x" and
            # drops the tags; whichever way it was written, its rules count.
            self.sheet.add_css(html_unescape(_MARKUP_TAG_RE.sub("", css)))
        self._css = None

    def handle_comment(self, data: str) -> None:
        if data.lstrip().lower().startswith("[if"):
            self.sheet.add_css(data)  # Outlook's conditional styles (mso-hide)


class _HTMLToText(_MarkupReader):
    """Second pass: collect visible text, dropping quoted history so it never reaches
    the comment.

    The open elements are a stack in which each element records whether it hides
    its content; text is visible only while no open element hides.  A hiding
    element is popped only by an end tag a browser would also honour, so hostile
    nesting can make the reader drop text, never show hidden text.
    """

    def __init__(self, html: str, sheet: _StyleSheet) -> None:
        super().__init__(html)
        self._sheet = sheet
        self._parts: list[str] = []
        self._line_has_content = False
        self._stack: list[tuple[str, bool]] = []  # (tag, hides its content)
        self._where: dict[str, list[int]] = {}  # tag -> stack indexes, innermost last
        self._hiding: list[int] = []  # stack indexes of hiding elements
        self._special: list[int] = []  # stack indexes of special elements
        self._struck: list[int] = []  # stack indexes of elements striking their text through
        # Each open element's text colour and background as inherited (``_own_paint``), the
        # body's first: text in an ancestor's background colour is as hidden as in its own.
        # Else no element's keys matter.
        self._keyed = bool(sheet.hiding or sheet.clipping or sheet.shades or sheet.striking)
        self._paints: list[_Paint] = [((_INHERITED,), (_INHERITED,))]
        for root in ("html", "body"):  # a style sheet paints them even where no tag is written
            self._paints[0] = self._paint(root, [], [root, "*"]) or ((None,), (None,))
        self._blank = _same_colour(self._paints[0])  # the whole message drawn in its background
        self._raw: str | None = None  # inside <script>, <style>, <title>, ... until its end tag
        self._script_escaped = False
        self._revealed = 0  # inside <!--[if !mso]><!--> ... <!--<![endif]-->: Outlook does not show it
        self._stopped = False

    def text(self) -> str:
        return "" if self._blank else "".join(self._parts) + (STRIKE_MARK if self._struck else "")

    def _soft_break(self) -> None:
        if self._line_has_content:
            self._hard_break()

    def _hard_break(self) -> None:
        # Struck text ends with its line and goes on on the next: a mark pairs on one line.
        self._parts.append(f"{STRIKE_MARK}\n{STRIKE_MARK}" if self._struck else "\n")
        self._line_has_content = False

    # The stack of open elements --------------------------------------------------

    def _paint(self, tag: str, attrs: list[tuple[str, str | None]], keys: list[str]) -> _Paint | None:
        """The colours and backgrounds an element may show: its own or else its parent's, and
        each one a style sheet's rule may give it; None if there may be too many to compare."""
        colour, background = _own_paint(tag, attrs)
        inherited_colours, inherited_backgrounds = self._paints[-1]
        colours = inherited_colours if colour == _INHERITED else (colour,)
        backgrounds = inherited_backgrounds if background == _INHERITED else (background,)
        sheet_colours, sheet_backgrounds = self._sheet.paint(keys)
        if sheet_colours:
            colours = _add_shades(colours, sheet_colours, inherited_colours)
        if sheet_backgrounds:
            backgrounds = _add_shades(backgrounds, sheet_backgrounds, inherited_backgrounds)
        if len(colours) > _MAX_SHADES or len(backgrounds) > _MAX_SHADES:
            return None
        return colours, backgrounds

    def _push(self, tag: str, hides: bool, paint: _Paint) -> None:
        index = len(self._stack)
        self._stack.append((tag, hides))
        self._paints.append(paint)
        self._where.setdefault(tag, []).append(index)
        if hides:
            self._hiding.append(index)
        if tag in _SPECIAL_TAGS:
            self._special.append(index)

    def _pop_to(self, index: int) -> None:
        """Close the element at ``index`` and everything opened inside it."""
        while len(self._stack) > index:
            tag, hides = self._stack.pop()
            self._paints.pop()
            self._where[tag].pop()
            if hides:
                self._hiding.pop()
            if tag in _SPECIAL_TAGS:
                self._special.pop()
            if self._struck and self._struck[-1] == len(self._stack):
                self._struck.pop()
                if not self._struck:
                    self._parts.append(STRIKE_MARK)

    def _top_is(self, *tags: str) -> bool:
        """Whether the innermost element is one of ``tags`` and does not hide."""
        return bool(self._stack) and self._stack[-1][0] in tags and not self._stack[-1][1]

    def _close_implied(self, tag: str) -> None:
        """End the innermost element where this start tag ends it in a browser too.

        Only elements that hide nothing are ended here, so a mistake costs nothing.
        """
        if tag in _P_CLOSERS and self._top_is("p"):
            self._pop_to(len(self._stack) - 1)
        if (tag == "li" and self._top_is("li")) or (tag in ("dd", "dt") and self._top_is("dd", "dt")):
            self._pop_to(len(self._stack) - 1)
        if tag in ("td", "th", "tr") and self._top_is("td", "th"):
            self._pop_to(len(self._stack) - 1)
        if tag == "tr" and self._top_is("tr"):
            self._pop_to(len(self._stack) - 1)
        if tag in ("option", "optgroup") and self._top_is("option"):
            self._pop_to(len(self._stack) - 1)

    def _close(self, tag: str) -> None:
        """Honour an end tag only where a browser certainly does, and never across a
        hiding element it does not itself close."""
        positions = self._where.get(tag)
        if not positions:
            return
        target = positions[-1]
        if self._hiding and self._hiding[-1] > target:
            return  # a hidden element inside would close with it
        if self._revealed and self._stack[target][1]:
            return  # Outlook does not see this end tag, so for its reader the element stays open
        if tag == "template":
            pass  # </template> closes everything inside it
        elif tag in _SCOPED_END_TAGS:
            for boundary in _SCOPED_END_TAGS[tag]:
                if self._where.get(boundary) and self._where[boundary][-1] > target:
                    return
        elif self._special and self._special[-1] > target:
            return  # a browser ignores "</span>" with a <div> still open inside the span
        self._pop_to(target)

    # html.parser callbacks ---------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._stopped or self._raw is not None:
            return
        name = self.written_start_tag() or tag
        element_id = next((v for n, v in attrs if n == "id" and v), "")
        if element_id.strip(_HTML_SPACE).lower() in _OUTLOOK_STOP_IDS:
            self._stopped = True
            return
        if name in ("html", "body"):
            if name == "body" and self._top_is_head():
                self._pop_to(len(self._stack) - 1)
            if not self._stack:  # what the whole message is painted with, under every element
                self._paints[0] = self._paint(name, attrs, _element_keys(name, attrs)) or ((None,), (None,))
                self._blank = self._blank or _same_colour(self._paints[0])
            return  # never pushed: the first pass judged their attributes
        if self._top_is_head() and name not in _HEAD_CONTENT:
            self._pop_to(len(self._stack) - 1)  # body content ends an unclosed <head>
        if name in _VOID_TAGS:
            if name == "br":
                self._hard_break()
            elif name == "hr":
                self._close_implied(name)
                self._soft_break()
            return
        if name == "plaintext":
            self._stopped = True  # the rest of the document is raw text
            return
        self._close_implied(name)
        if name in _RAW_TEXT_TAGS:
            self._raw, self._script_escaped = name, False
            return
        if len(self._stack) >= _MAX_HTML_DEPTH:
            self._stopped = True  # too deep to follow: the rest counts as hidden
            return
        css_class = next((v for n, v in attrs if n == "class" and v), "").lower()
        quote = name == "blockquote" or any(c in css_class for c in _QUOTE_CLASSES)
        keys = _element_keys(name, attrs) if self._keyed else []
        paint = self._paint(name, attrs, keys)
        hides = quote or name in _HIDDEN_TAGS or paint is None or self._sheet.hides(keys)
        hides = hides or _attributes_hide(name, attrs, self._sheet.clips(keys))
        if paint is None:
            paint = ((None,), (None,))  # its text counts as hidden: what it paints does not matter
        hides = hides or _same_colour(paint)
        if quote and not self._hiding and not self._revealed:
            self._soft_break()
            # What follows was written below the quote (a line of its own, struck or not).
            self._parts.append(f"{STRIKE_MARK}\n{QUOTE_MARK}\n{STRIKE_MARK}" if self._struck else QUOTE_MARK + "\n")
            self._line_has_content = False
        self._push(name, hides, paint)
        if _attributes_strike(name, attrs) or self._sheet.strikes(keys):
            if not self._struck:
                self._parts.append(STRIKE_MARK)
            self._struck.append(len(self._stack) - 1)
        if name in _BLOCK_TAGS:
            self._soft_break()
        elif name in ("td", "th") and self._line_has_content:
            self._parts.append(" ")

    def _top_is_head(self) -> bool:
        return bool(self._stack) and self._stack[-1][0] == "head"

    def handle_endtag(self, tag: str) -> None:
        if self._stopped:
            return
        name = self.written_end_tag()
        if name is None:
            return  # a browser reads a bogus comment here, not an end tag
        if self._raw is not None:
            if name == self._raw:
                if self._script_escaped:
                    self._stopped = True  # "<!--<script>" may hide this end tag from a browser
                self._raw = None
            return
        if name in ("html", "body"):
            return  # text after </body> is still shown
        if name == "br":
            self._hard_break()
            return
        self._close(name)
        if name in _BLOCK_TAGS:
            self._soft_break()

    def handle_data(self, data: str) -> None:
        if self._stopped:
            return
        if self._raw is not None:
            if self._raw == "script" and "<!--" in data:
                self._script_escaped = True
            return
        if self.unread_start_tag():
            self._stopped = True  # html.parser could not read this tag; a browser may hide what follows
            return
        if self._top_is_head():
            if not data.strip(_HTML_SPACE):
                return
            self._pop_to(len(self._stack) - 1)  # text ends an unclosed <head>
        if self._hiding or self._revealed:
            return
        data = data.replace(QUOTE_MARK, "")
        if self._where.get("pre"):
            self._parts.append(data)
            lines = data.split("\n")
            if len(lines) > 1:
                self._line_has_content = bool(lines[-1].strip(" \t"))
            elif data.strip(" \t"):
                self._line_has_content = True
            return
        collapsed = _HTML_SPACE_RE.sub(" ", data)
        if self._struck:
            collapsed = collapsed.replace("~", " ")  # its own tildes would end the mark
        if collapsed.strip(" "):
            self._line_has_content = True
        self._parts.append(collapsed)

    def handle_comment(self, data: str) -> None:
        if self._stopped:
            return
        if self._raw is not None:
            self._script_escaped = self._script_escaped or self._raw == "script"
            return
        start = self.position()
        if self.html.startswith("<!--", start) and not self.html.startswith("-->", start + 4 + len(data)):
            self._stopped = True  # html.parser ended it at "-- >"; a browser reads on
            return
        condition = data.strip().lower()
        if condition.startswith("[if") and condition.endswith("><!"):
            self._revealed += 1
        elif condition == "<![endif]" and self._revealed:
            self._revealed -= 1
        elif condition.startswith("[if") and re.search(r"<[a-zA-Z]", data) and not self._where.get("head"):
            self._stopped = True  # markup only Outlook renders: it may hide what follows

    def unknown_decl(self, data: str) -> None:
        if self._stopped or self._raw is not None:
            self._script_escaped = self._script_escaped or self._raw == "script"
            return
        condition = data.strip().lower()
        if condition.startswith("if"):
            self._revealed += 1  # <![if !mso]>: shown by browsers, maybe not by Outlook
        elif condition == "endif" and self._revealed:
            self._revealed -= 1


def html_to_text(html: str) -> str:
    """Render an HTML body as the plain lines a reader sees, without quoted history; never raises."""
    lines = render_html(html).split("\n")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line for line in lines if line != QUOTE_MARK)).strip()


def render_html(html: str, max_tags: int = MAX_HTML_TAGS) -> str:
    """``html_to_text``, with a ``QUOTE_MARK`` line where each quoted block was left out;
    of its first ``max_tags`` tags only (the parts of one message share ``MAX_HTML_TAGS``)."""
    if len(html) > MAX_HTML_CHARS:
        return ""  # bounded before it starts: too long to read, so it decides nothing
    html = html.replace("\r\n", "\n").replace("\r", "\n")
    if (read := _within_tag_limit(html, max_tags)) is None:
        return ""  # what is not read could hide what is: decides nothing
    html = read
    # The first pass only matters if something it looks at is there at all.
    sheet = _StyleCollector(html).collect() if _STYLE_PASS_NEEDED_RE.search(html) else _StyleSheet()
    if sheet.hide_all:
        return ""
    parser = _HTMLToText(html, sheet)
    parser.read()  # on a parser failure, keep what was collected before it
    text = parser.text().replace("\xa0", " ")
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _within_tag_limit(html: str, max_tags: int) -> str | None:
    """``html`` before its tag after ``max_tags``; None when the part left out holds what
    would change how the part read is shown (a style sheet, a <body>'s or <html>'s
    attributes, Outlook's conditional markup)."""
    if html.count("<") <= max_tags:
        return html
    cut = -1
    for _ in range(max(max_tags, 0) + 1):
        cut = html.find("<", cut + 1)
    return None if _STYLE_PASS_NEEDED_RE.search(html, cut) else html[:cut]
