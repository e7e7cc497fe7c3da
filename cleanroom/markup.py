"""Escaping for every HTML page the project serves: the API's review pages (`cleanroom.api.web_render`)
and the owner's local review pages (`cleanroom.local.review_pages`).

Names and values on those pages come from other orgs, so everything is escaped, and a hidden character
(bidi control, zero-width, format or tag character) is drawn as a visible marker (`identifiers.marker`).
"""

from __future__ import annotations

import html
import re
from typing import Any

from cleanroom.identifiers import hidden_characters, marker

__all__ = ["HIDDEN", "Safe", "h"]


class Safe(str):
    """Markup built by the pages' own code: inserted as is."""


HIDDEN = re.compile(r"[^\x20-\x7e\t\n\r]")  # where a hidden character may be: anything not printable ASCII


def h(value: Any) -> Safe:
    """Escaped text; a hidden character becomes a visible marker."""
    if isinstance(value, Safe):
        return value
    if value is None:
        return Safe('<span class="muted">-</span>')
    text = html.escape(str(value), quote=True)
    if not text.isascii() or not text.isprintable():
        text = HIDDEN.sub(_show_hidden, text)
    return Safe(text)


def _show_hidden(match: re.Match[str]) -> str:
    char = match.group()
    if not hidden_characters(char):
        return char
    return f'<span class="hidden-char" title="hidden character">{html.escape(marker(char))}</span>'
