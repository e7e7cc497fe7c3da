"""One vocabulary for the names people choose (orgs, datasets, plugins and their versions, jobs), and
the characters that make text look like something it is not.

Names are checked by a full match (`re.fullmatch`: a `$` would also match before a final newline), so
a name is exactly what it shows. A new name that looks like one already in the room (equal once both
are NFKC-normalised, case-folded and read through `skeleton`) is refused: `retail.purchases` and
`retail_purchases`, `model-v1` and `model-vl` cannot both exist.

`hidden_characters` finds what a reader cannot see or would misread in any text: bidi controls
("Trojan Source"), zero-width and other format characters, control characters and unusual spaces.
The review reports them and the review page draws each one as a visible `<U+202E>` marker.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from cleanroom.errors import ValidationError
from cleanroom.sandbox.vocabulary import DATASET_NAME, JOB_NAME, ORG_NAME, PLUGIN_NAME

__all__ = ["PATTERNS", "check_name", "hidden_characters", "lookalike", "marker", "skeleton"]

PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "org": (ORG_NAME, "org names are 2-40 characters: lowercase letters, digits and '-'"),
    "dataset": (DATASET_NAME, "dataset names are 1-63 characters: lowercase letters, digits, '_', '.', '-'"),
    "plugin": (PLUGIN_NAME, "plugin names are 2-64 characters: lowercase letters, digits and '-'"),
    # semantic versions without leading zeros: 1.2.3, 1.2, 1.2.3-rc.1, 1.2.3+build.5
    "version": (
        re.compile(
            r"(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})(\.(0|[1-9]\d{0,8}))?"
            r"(-[0-9A-Za-z.-]{1,32})?(\+[0-9A-Za-z.-]{1,32})?"
        ),
        "versions are like 1.2.3 (no leading zeros), optionally -pre and +build",
    ),
    "job": (JOB_NAME, "job names are 1-63 characters: lowercase letters, digits, '_', '.', '-'"),
}

# Characters a reader does not see, or sees as something else.
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE_MARKS = frozenset("\u034f\u17b4\u17b5\u180b\u180c\u180d\u180f")
_UNUSUAL = re.compile(r"[^\x20-\x7e\t\n\r]")  # anything but printable ASCII and ordinary line ends


def hidden_characters(text: str) -> list[tuple[int, str, str]]:
    """Every hidden or misleading character of `text`: (offset, character, what it is)."""
    found = []
    for match in _UNUSUAL.finditer(text):
        what = _hidden(match.group())
        if what:
            found.append((match.start(), match.group(), what))
    return found


def _hidden(char: str) -> str | None:
    if char in BIDI:
        return "a bidirectional-text control (it reorders how the text is drawn)"
    category = unicodedata.category(char)
    if category == "Cf":
        return "an invisible format character (zero-width or similar)"
    if category in ("Cc", "Cs", "Co", "Cn"):
        return "a control or unassigned character"
    if category in ("Zs", "Zl", "Zp") and char != " ":
        return "an unusual space or line separator"
    if char in _INVISIBLE_MARKS or "\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef":
        return "an invisible mark (a variation selector or joiner)"
    if char in "\u115f\u1160\u3164\uffa0\u2800":  # Hangul fillers and the blank braille pattern
        return "a blank letter"
    return None


def marker(char: str) -> str:
    """How the review page shows a hidden character: `<U+202E>`."""
    return f"<U+{ord(char):04X}>"


_CONFUSABLE = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"), ("i", "l"), ("|", "l"))
_SEPARATORS = re.compile(r"[-_.\s]+")


def skeleton(name: str) -> str:
    """What a name looks like: NFKC, case-folded, separators alike, easily confused letters alike."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = "".join(c for c in text if not _hidden(c))
    text = _SEPARATORS.sub("-", text).strip("-")
    for many, one in _CONFUSABLE:
        text = text.replace(many, one)
    return text


def lookalike(name: str, existing: Iterable[str]) -> str | None:
    """An existing name that is not `name` but looks like it, if any."""
    mine = skeleton(name)
    for other in existing:
        if other != name and skeleton(other) == mine:
            return other
    return None


def check_name(kind: str, value: object, existing: Iterable[str] = ()) -> str:
    """`value` if it is a valid `kind` name that looks like none of `existing`; else a ValidationError."""
    pattern, rule = PATTERNS[kind]
    if not isinstance(value, str):
        raise ValidationError(f"the {kind} name must be text; {rule}")
    hidden = hidden_characters(value)
    if hidden:
        offset, char, what = hidden[0]
        raise ValidationError(
            f"the {kind} name {_shown(value)} has {what} {marker(char)} at position {offset + 1}; {rule}"
        )
    if not pattern.fullmatch(value):
        raise ValidationError(f"the {kind} name {_shown(value)} is not valid: {rule}")
    other = lookalike(value, existing)
    if other is not None:
        raise ValidationError(
            f"the {kind} name {value!r} looks like the existing {other!r}",
            hint=f"choose a {kind} name that cannot be mistaken for another",
        )
    return value


def _shown(value: str) -> str:
    """A name for an error message, hidden characters drawn as markers, cut to a readable length."""
    shown = "".join(marker(c) if _hidden(c) or (c.isascii() and not c.isprintable()) else c for c in value[:80])
    return repr(shown + ("..." if len(value) > 80 else ""))
