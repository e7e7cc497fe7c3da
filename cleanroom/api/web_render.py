"""Markup pieces of the review page: escaping, tags, tables, hashes and sizes, and the page's style.

Every value goes through `h()`, which escapes anything that is not `Safe` (markup built here) and draws
hidden characters (bidi controls, zero-width and other format characters) as visible `<U+202E>` markers:
names, findings, reasons and check details come from other orgs.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from cleanroom.identifiers import hidden_characters, marker
from cleanroom.markup import HIDDEN as _HIDDEN
from cleanroom.markup import Safe as Safe  # re-exported for the pages
from cleanroom.markup import h as h


def attr(value: Any) -> str:
    """An attribute's value: escaped, hidden characters spelled as markers (an attribute holds no markup)."""
    text = str(value)
    if not text.isascii() or not text.isprintable():
        text = _HIDDEN.sub(lambda m: marker(m.group()) if hidden_characters(m.group()) else m.group(), text)
    return html.escape(text, quote=True)


def join(parts: Iterable[Any], sep: str = "") -> Safe:
    return Safe(sep.join(h(p) for p in parts))


def tag(name: str, content: Any = "", **attrs: Any) -> Safe:
    spelled = "".join(f' {k.rstrip("_").replace("_", "-")}="{attr(v)}"' for k, v in attrs.items() if v is not None)
    return Safe(f"<{name}{spelled}>{h(content)}</{name}>")


def link(href: str, text: Any, **attrs: Any) -> Safe:
    return tag("a", text, href=href, **attrs)


def ui(*parts: str) -> str:
    return "/ui/" + "/".join(quote(p, safe="") for p in parts)


def when(ts: float | None, *, wrap: bool = False) -> Safe:
    """A UTC time on one line (`wrap`: date and time may go on two)."""
    if not isinstance(ts, int | float):
        return h(None)
    return tag("span", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC", class_=None if wrap else "nowrap")


def breakable(value: Any) -> Safe:
    """A name that may break after its dots and underscores (dataset names, error classes), not mid-word.
    (Escaped text and hidden-character markers hold no '.' or '_' of their own.)"""
    return Safe(re.sub(r"([._])", r"\1<wbr>", h(value))) if value is not None else h(None)


def duration(start: float | None, end: float | None) -> Safe:
    if start is None or end is None:
        return h(None)
    return tag("span", f"{end - start:.1f} s", class_="nowrap")


def pre(value: Any, cls: str | None = None) -> Safe:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True)
    return tag("pre", text, class_=cls)


def badge(text: Any, kind: str = "", *, long: bool = False) -> Safe:
    """A status; `long`: text of varying length (names, reasons) that may wrap."""
    return tag("span", text, class_=f"badge {kind}{' long' if long else ''}".strip())


def ident(value: Any, shown: int | None = None) -> Safe:
    """A long id or hash in one line: cut with an ellipsis by the style (or after `shown` characters),
    the whole value in the tooltip (`title`)."""
    if value is None or value == "":
        return h(None)
    text = str(value)
    short = text if shown is None or len(text) <= shown else text[:shown] + "…"
    return tag("code", short, class_="id", title=text)


def size(n: Any) -> Safe:
    """Bytes, human-readable; the exact count in the tooltip."""
    if isinstance(n, bool) or not isinstance(n, int):
        return h(None)
    human = f"{n:,} B" if n < 10_000 else f"{n / 1024:,.1f} KiB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MiB"
    return tag("span", human, class_="nowrap", title=f"{n:,} bytes")


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def table(
    headers: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    empty: str = "nothing yet",
    *,
    cls: str | None = None,
    scroll: bool = False,
    nowrap: Iterable[int] = (),
) -> Safe:
    """A table; `nowrap`: the columns of short values (a status, a version, a time) kept on one line, so the
    free text wraps instead; `scroll`: its own horizontal scroll bar (for tables whose columns come from
    data, like mock rows), so that it never widens the page."""
    whole = set(nowrap)

    def td(i: int, cell: Any) -> Safe:
        return tag("td", cell, class_="nw" if i in whole else None)

    body = [Safe("<tr>" + "".join(td(i, c) for i, c in enumerate(row)) + "</tr>") for row in rows]
    if not body:
        return tag("p", empty, class_="muted")
    head = "".join(tag("th", x) for x in headers)
    spelled = f' class="{attr(cls)}"' if cls else ""
    out = f"<table{spelled}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return Safe(f'<div class="scroll">{out}</div>' if scroll else out)


def facts(pairs: Iterable[tuple[str, Any]]) -> Safe:
    items = "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in pairs)
    return Safe(f"<dl>{items}</dl>")


def command(text: str) -> Safe:
    return tag("pre", text, class_="cmd")


def details(summary: str, content: Any) -> Safe:
    """Closed by default: for experts (raw JSON)."""
    return Safe(f"<details>{tag('summary', summary)}{h(content)}</details>")


STATUS_KIND = {
    "succeeded": "ok",
    "failed": "bad",
    "timed_out": "bad",
    "cancelled": "warn",
    "running": "info",
    "queued": "info",
    "approve": "ok",
    "reject": "bad",
    "released": "ok",
    "nothing_released": "warn",
}

# Readable at 1280 px: cells wrap anywhere rather than widen the page, ids and hashes are one line cut
# with an ellipsis (whole in the tooltip), tables whose columns come from data scroll on their own.
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2433;
 background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:center;
 flex-wrap:wrap}
header a{color:#cfe0ff;text-decoration:none}header a:hover{text-decoration:underline}
header .brand{font-weight:700;color:#fff}header .who{margin-left:auto;color:#c9ced8;overflow-wrap:anywhere}
header form{display:inline;margin:0}header button{font:inherit;cursor:pointer}
main{padding:1em 1.5em 3em;max-width:1400px;box-sizing:border-box}.nowrap{white-space:nowrap}
h1{font-size:1.5em;margin:.4em 0;overflow-wrap:anywhere}
h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #dde1e8;overflow-wrap:anywhere}
h3{font-size:1em;margin:1.2em 0 .3em;font-family:ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere}
a{color:#1a56c4}p{overflow-wrap:anywhere}
table{border-collapse:collapse;background:#fff;width:100%;margin:.4em 0}
th,td{border:1px solid #dde1e8;padding:.3em .55em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#eef1f5;font-weight:600;overflow-wrap:normal}td.nw{white-space:nowrap;overflow-wrap:normal}
table.jobs{table-layout:fixed}
table.jobs th:nth-child(1){width:10%}table.jobs th:nth-child(2){width:11%}table.jobs th:nth-child(3){width:9%}
table.jobs th:nth-child(4){width:12%}table.jobs th:nth-child(5){width:12%}table.jobs th:nth-child(6){width:9%}
table.jobs th:nth-child(7){width:10%}table.jobs th:nth-child(8){width:6%}table.jobs th:nth-child(9){width:21%}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-width:100%;overflow-x:auto}
.scroll td,.scroll th{overflow-wrap:normal;white-space:nowrap}
code.id{display:inline-block;max-width:11em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;
 vertical-align:bottom}
dd code.id,table.jobs code.id{max-width:100%}
pre{background:#fff;border:1px solid #dde1e8;padding:.6em;overflow:auto;margin:.4em 0}
pre.cmd{background:#1d2433;color:#e8ecf3;border:0;white-space:pre-wrap;overflow-wrap:anywhere}
code,pre,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2em 1em;margin:.4em 0}
dt{color:#5b6578}dd{margin:0;overflow-wrap:anywhere;min-width:0}
details{margin:1em 0}summary{cursor:pointer;color:#1a56c4}
.muted{color:#7a8394}
.badge{display:inline-block;padding:0 .5em;border-radius:.8em;background:#e4e7ec;font-size:.85em;
 white-space:nowrap}
.badge.long{white-space:normal;overflow-wrap:anywhere}
.badge.ok{background:#d5f2dc;color:#14532d}.badge.bad{background:#fde0e0;color:#8a1414}
.badge.warn{background:#fff1c2;color:#6b4e00}.badge.info{background:#dde9ff;color:#173d8a}
.banner{padding:.6em 1em;border-radius:.3em;margin:.6em 0}
.banner.ok{background:#d5f2dc}.banner.bad{background:#fde0e0}.banner.warn{background:#fff1c2}
table.code{border:1px solid #dde1e8;width:100%}
table.code td{border:0;padding:0 .6em;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;
 white-space:pre-wrap;word-break:break-all}
table.code td.n{color:#9aa3b2;text-align:right;user-select:none;width:3.5em;border-right:1px solid #dde1e8}
table.code tr.flag-blocking td{background:#fde0e0}table.code tr.flag-warning td{background:#fff6d6}
table.code tr.finding td{font-family:system-ui,sans-serif;font-size:13px;white-space:normal}
table.code tr.finding.blocking td{background:#f9c4c4;color:#6d0f0f;font-weight:600}
table.code tr.finding.warning td{background:#ffeaa8;color:#5a4200}
.diff{white-space:pre-wrap;overflow-wrap:anywhere}
.diff .add{color:#14632d;background:#e6f6ea}.diff .del{color:#8a1414;background:#fdeaea}
form.login{background:#fff;border:1px solid #dde1e8;padding:1.2em;max-width:34em}
form.login input{width:100%;font:inherit;padding:.4em;box-sizing:border-box;margin:.4em 0 .8em}
form.login button{font:inherit;padding:.4em 1.2em;cursor:pointer}
.error{background:#fde0e0;color:#8a1414;padding:.6em 1em;border-radius:.3em}
.hidden-char{background:#8a1414;color:#fff;border-radius:.2em;padding:0 .15em;font-weight:700}
.lineage{background:#eef1f5;border-left:4px solid #1a56c4}
"""
