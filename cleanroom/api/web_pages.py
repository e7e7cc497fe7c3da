"""HTML for the review page: small functions from view dicts to escaped markup, no template engine.

Every value that reaches the page goes through `h()`, which escapes anything that is not `Safe`
(markup built here). Plugin code, names, findings and messages are attacker-controlled.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from cleanroom.api.authz import Caller
from cleanroom.identifiers import hidden_characters, marker

MOCK_ROWS_SHOWN = 100
# Replaced by the browser's CSRF token after rendering. Escaped values never contain "<".
CSRF_PLACEHOLDER = "<!--csrf-->"
CSRF_INPUT = f'<input type="hidden" name="csrf" value="{CSRF_PLACEHOLDER}">'


class Safe(str):
    """Markup built by this module: inserted as is."""


def h(value: Any) -> Safe:
    """Escaped text; a hidden character (bidi control, zero-width, ...) becomes a visible marker."""
    if isinstance(value, Safe):
        return value
    if value is None:
        return Safe('<span class="muted">-</span>')
    text = html.escape(str(value), quote=True)
    if not text.isascii() or not text.isprintable():
        text = _HIDDEN.sub(_show_hidden, text)
    return Safe(text)


_HIDDEN = re.compile(r"[^\x20-\x7e\t\n\r]")


def _show_hidden(match: re.Match[str]) -> str:
    char = match.group()
    if not hidden_characters(char):
        return char
    return f'<span class="hidden-char" title="hidden character">{html.escape(marker(char))}</span>'


def join(parts: Iterable[Any], sep: str = "") -> Safe:
    return Safe(sep.join(h(p) for p in parts))


def tag(name: str, content: Any = "", **attrs: Any) -> Safe:
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{h(v)}"' for k, v in attrs.items() if v is not None)
    return Safe(f"<{name}{attr}>{h(content)}</{name}>")


def link(href: str, text: Any) -> Safe:
    return tag("a", text, href=href)


def ui(*parts: str) -> str:
    return "/ui/" + "/".join(quote(p, safe="") for p in parts)


def when(ts: float | None) -> Safe:
    if ts is None:
        return h(None)
    return tag("span", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC", class_="nowrap")


def duration(start: float | None, end: float | None) -> Safe:
    if start is None or end is None:
        return h(None)
    return tag("span", f"{end - start:.1f} s", class_="nowrap")


def pre(value: Any, cls: str | None = None) -> Safe:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True)
    return tag("pre", text, class_=cls)


def badge(text: Any, kind: str = "") -> Safe:
    return tag("span", text, class_=f"badge {kind}".strip())


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "nothing yet") -> Safe:
    body = [Safe("<tr>" + "".join(tag("td", c) for c in row) + "</tr>") for row in rows]
    if not body:
        return tag("p", empty, class_="muted")
    head = "".join(tag("th", x) for x in headers)
    return Safe(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def facts(pairs: Iterable[tuple[str, Any]]) -> Safe:
    items = "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in pairs)
    return Safe(f"<dl>{items}</dl>")


def command(text: str) -> Safe:
    return tag("pre", text, class_="cmd")


STATUS_KIND = {"succeeded": "ok", "failed": "bad", "timed_out": "bad", "cancelled": "warn",
               "running": "info", "queued": "info", "approve": "ok", "reject": "bad", "released": "ok",
               "nothing_released": "warn"}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2433;
 background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:center;
 flex-wrap:wrap}
header a{color:#cfe0ff;text-decoration:none}header a:hover{text-decoration:underline}
header .brand{font-weight:700;color:#fff}header .who{margin-left:auto;color:#c9ced8}
header form{display:inline;margin:0}header button{font:inherit;cursor:pointer}
main{padding:1em 1.5em 3em;max-width:1400px}.nowrap{white-space:nowrap}
h1{font-size:1.5em;margin:.4em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #dde1e8}
h3{font-size:1em;margin:1.2em 0 .3em;font-family:ui-monospace,Menlo,Consolas,monospace}
a{color:#1a56c4}
table{border-collapse:collapse;background:#fff;width:100%;margin:.4em 0}
th,td{border:1px solid #dde1e8;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
pre{background:#fff;border:1px solid #dde1e8;padding:.6em;overflow:auto;margin:.4em 0}
pre.cmd{background:#1d2433;color:#e8ecf3;border:0}
code,pre,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;margin:.4em 0}
dt{color:#5b6578}dd{margin:0;word-break:break-all}
.muted{color:#7a8394}
.badge{display:inline-block;padding:0 .5em;border-radius:.8em;background:#e4e7ec;font-size:.85em}
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
.diff .add{color:#14632d;background:#e6f6ea}.diff .del{color:#8a1414;background:#fdeaea}
form.login{background:#fff;border:1px solid #dde1e8;padding:1.2em;max-width:34em}
form.login input{width:100%;font:inherit;padding:.4em;box-sizing:border-box;margin:.4em 0 .8em}
form.login button{font:inherit;padding:.4em 1.2em;cursor:pointer}
.error{background:#fde0e0;color:#8a1414;padding:.6em 1em;border-radius:.3em}
.hidden-char{background:#8a1414;color:#fff;border-radius:.2em;padding:0 .15em;font-weight:700}
.lineage{background:#eef1f5;border-left:4px solid #1a56c4}
"""

NAV = (("datasets", "Datasets"), ("plugins", "Plugins"), ("jobs", "Jobs"), ("releases", "Releases"),
       ("audit", "Audit log"))


def layout(title: str, body: Any, caller: Caller | None = None) -> str:
    nav = join(link(ui(path), label) for path, label in NAV) if caller else Safe("")
    who = Safe("")
    if caller:
        who = Safe(f'<span class="who">{h(caller.name)} ({h(", ".join(caller.roles))})</span>'
                   '<form method="post" action="/ui/logout">'
                   f'{CSRF_INPUT}<button type="submit">Log out</button></form>')
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{h(title)} · cleanroom</title><style>{CSS}</style></head><body>"
            f'<header><span class="brand">cleanroom</span>{nav}{who}</header>'
            f"<main><h1>{h(title)}</h1>{h(body)}</main></body></html>")


def login_page(error: str | None = None) -> str:
    err = tag("p", error, class_="error") if error else Safe("")
    form = Safe('<form class="login" method="post" action="/ui/login">' + CSRF_INPUT +
                '<label for="token">Your org token</label>'
                '<input id="token" name="token" type="password" autocomplete="off" required maxlength="300">'
                '<button type="submit">Log in</button>'
                '<p class="muted">The token stays in an HttpOnly cookie of this browser until you log out.'
                " Approving needs your org's signing key: use the CLI.</p></form>")
    return layout("Log in to the review page", Safe(err + form))


def error_page(caller: Caller | None, status: int, message: str) -> str:
    return layout(f"Error {status}", tag("p", message, class_="error"), caller)


def _bytes(size: int | None, unit: str) -> Any:
    """A size, or the muted dash when the caller may not see it (exact sizes are the owner's)."""
    return None if size is None else f"{size:,} {unit}"


# Datasets -----------------------------------------------------------------------------------------

def datasets_page(caller: Caller, datasets: list[dict[str, Any]]) -> str:
    rows = [(link(ui("datasets", d["name"]), d["name"]), d["owner"], d["row_count"], len(d["columns"]),
             f"v{d['policy_version']}", _bytes(d["size"], "B"), when(d["created_at"])) for d in datasets]
    body = table(["name", "owner", "rows", "columns", "policy", "ciphertext", "created"], rows,
                 "no datasets in the room yet")
    return layout("Datasets", body, caller)


def dataset_page(caller: Caller, ds: dict[str, Any], budget: dict[str, Any] | None = None) -> str:
    schema_cols = ds["schema"].get("columns", [])
    col_rows = [(tag("code", c.get("name")), c.get("type"),
                 join(f"{k}={json.dumps(v)}" for k, v in sorted(c.items()) if k not in ("name", "type")))
                for c in schema_cols]
    names = [str(c.get("name")) for c in schema_cols]
    mock = ds["mock"][:MOCK_ROWS_SHOWN]
    extra = sorted({k for row in mock for k in row} - set(names))
    header = names + extra
    mock_rows = [[row.get(k) if k in row else Safe("") for k in header] for row in mock]
    parts = [
        tag("p", ds["description"]) if ds["description"] else Safe(""),
        facts([("owner", ds["owner"]), ("rows", ds["row_count"]),
               ("ciphertext sha256", tag("code", ds["sha256"])), ("size", _bytes(ds["size"], "bytes")),
               ("policy version", ds["policy_version"]),
               ("policy sha256", tag("code", ds["policy_sha256"])), ("created", when(ds["created_at"])),
               ("dropped before upload", ", ".join(ds["dropped"]) or None)]),
        _budget_facts(budget),
        tag("h2", "Schema"), table(["column", "type", "details"], col_rows),
        tag("h2", f"Policy (version {ds['policy_version']})"), pre(ds["policy_text"]),
        tag("h2", f"Mock sample ({len(mock)} of {len(ds['mock'])} rows shown; synthetic, not real data)"),
        table(header, mock_rows, "no mock rows"),
    ]
    return layout(f"Dataset {ds['name']}", join(parts), caller)


def _budget_facts(budget: dict[str, Any] | None) -> Safe:
    """The privacy budget: mode, spent and left (shown to the owner, the allowed recipients and staff)."""
    if budget is None:
        return Safe("")
    if budget["mode"] == "exact":
        return join([tag("h2", "Privacy"), facts([("mode", "exact (require_dp = false): every release is "
                                                           "reviewed by the owner")])])
    return join([tag("h2", "Privacy budget"), facts([
        ("mode", "differential privacy"),
        ("epsilon left", f"{budget['remaining_epsilon']:g} of {budget['epsilon']:g}"),
        ("delta left", f"{budget['remaining_delta']:g} of {budget['delta']:g}"),
        ("per job at most", f"epsilon {budget['job_epsilon']:g}, delta {budget['job_delta']:g}"),
        ("charges", len(budget["charges"]))])])


# Plugins ------------------------------------------------------------------------------------------

def approved_for(plugin: dict[str, Any]) -> list[str]:
    return sorted({a["dataset"] for a in plugin["approvals"]
                   if a["decision"] == "approve" and not a["revoked_at"]})


def plugins_page(caller: Caller, plugins: list[dict[str, Any]]) -> str:
    rows = [(link(ui("plugins", p["id"]), p["name"]), p["version"], p["kind"], p["submitted_by"],
             badge(p["blocking_findings"], "bad") if p["blocking_findings"] else badge(0, "ok"),
             ", ".join(approved_for(p)) or None, tag("code", p["id"][:16]), when(p["created_at"]))
            for p in plugins]
    body = table(["name", "version", "kind", "submitted by", "blocking findings", "approved for", "id",
                  "submitted"], rows, "no plugins you may see")
    return layout("Plugins", body, caller)


def _finding_row(f: dict[str, Any]) -> Safe:
    sev = str(f.get("severity", ""))
    cls = "blocking" if sev == "blocking" else "warning"
    text = join([badge(sev, "bad" if sev == "blocking" else "warn"), " ", tag("b", f.get("rule")), ": ",
                 f.get("message")])
    return Safe(f'<tr class="finding {cls}"><td class="n"></td><td>{text}</td></tr>')


def code_view(index: int, path: str, text: str, findings: list[dict[str, Any]]) -> Safe:
    by_line: dict[int, list[dict[str, Any]]] = {}
    loose: list[dict[str, Any]] = []
    for f in findings:
        line = f.get("line")
        (by_line.setdefault(line, []) if isinstance(line, int) and line > 0 else loose).append(f)
    lines = text.splitlines() or [""]
    rows = [_finding_row(f) for f in loose]
    for n, line in enumerate(lines, 1):
        here = by_line.pop(n, [])
        flag = ""
        if here:
            flag = " flag-blocking" if any(f.get("severity") == "blocking" for f in here) else " flag-warning"
        rows.append(Safe(f'<tr class="line{flag}" id="f{index}-L{n}"><td class="n">{n}</td>'
                         f"<td>{h(line)}</td></tr>"))
        rows.extend(_finding_row(f) for f in here)
    for leftover in by_line.values():  # findings past the last line
        rows.extend(_finding_row(f) for f in leftover)
    return Safe(f'{tag("h3", path, id=f"f{index}")}<table class="code">{"".join(rows)}</table>')


def diff_view(text: str) -> Safe:
    out = []
    for line in text.splitlines():
        cls = "add" if line.startswith("+") and not line.startswith("+++") else (
            "del" if line.startswith("-") and not line.startswith("---") else None)
        out.append(tag("span", line, class_=cls) if cls else h(line))
    return Safe(f'<pre class="diff">{chr(10).join(out)}</pre>')


def plugin_page(caller: Caller, p: dict[str, Any], own_datasets: list[str]) -> str:
    findings = p["review"].get("findings", [])
    files: dict[str, str] | None = p.get("files")
    file_index = {path: i for i, path in enumerate(files or {})}

    def where(f: dict[str, Any]) -> Safe:
        label = f"{f.get('file')}:{f.get('line')}" if f.get("line") else str(f.get("file") or "")
        i = file_index.get(str(f.get("file")))
        if i is None:
            return h(label or None)
        return link(f"#f{i}-L{f['line']}" if isinstance(f.get("line"), int) else f"#f{i}", label)

    order = sorted(findings, key=lambda f: (f.get("severity") != "blocking", str(f.get("file")),
                                            f.get("line") if isinstance(f.get("line"), int) else 0))
    finding_rows = [(badge(f.get("severity"), "bad" if f.get("severity") == "blocking" else "warn"), where(f),
                     f.get("rule"), f.get("message")) for f in order]
    approval_rows = [(badge(a["decision"], STATUS_KIND.get(a["decision"], "")), a["dataset"], a["org"],
                      f"v{a['policy_version']}", a["reason"] or None, when(a["created_at"]),
                      badge("revoked", "warn") if a["revoked_at"] else badge("current", "ok"))
                     for a in p["approvals"]]
    targets = own_datasets or ["<dataset>"]
    cmds = "\n".join(f"cleanroom plugin approve {p['id']} --dataset {d}" for d in targets)
    cmds += f"\ncleanroom plugin reject {p['id']} --dataset {targets[0]} --reason '...'"
    blocking = p["blocking_findings"]
    prev = p.get("diff_against")
    if prev:
        replaces = (f"It replaces {p['name']} {prev['version']} ({prev['id'][:16]}), also by "
                    f"{prev.get('submitted_by', p['submitted_by'])}, approved for "
                    f"{', '.join(prev.get('approved_for', [])) or 'no dataset any more'}.")
    else:
        replaces = (f"It replaces nothing: {p['submitted_by']} has no earlier approved version of "
                    f"{p['name']}. Review it as new code.")
    parts = [
        tag("p", f"Submitted by {p['submitted_by']}. {replaces}", class_="banner lineage"),
        facts([("id (sha256 of the bundle)", tag("code", p["id"])), ("kind", p["kind"]),
               ("submitted by", p["submitted_by"]), ("size", f"{p['size']:,} bytes"),
               ("submitted", when(p["created_at"])), ("approved for", ", ".join(approved_for(p)) or None)]),
        tag("p", f"{blocking} blocking finding(s): approving this code needs a careful look.",
            class_="banner bad") if blocking else Safe(""),
        tag("h2", "Approve or reject (with the CLI: it signs with your org's key)"), command(cmds),
        tag("h2", f"Review findings ({len(findings)})"),
        table(["severity", "where", "rule", "message"], finding_rows, "no findings"),
        tag("h2", "Approvals"), table(["decision", "dataset", "by", "policy", "reason", "when", "state"],
                                      approval_rows, "no approvals yet"),
        tag("h2", "Manifest"), pre(p["manifest"]),
    ]
    if prev:
        parts += [tag("h2", f"Changes since the last approved version {prev['version']} ({prev['id'][:16]}) "
                            f"by {prev.get('submitted_by', p['submitted_by'])}"),
                  diff_view(prev["diff"]) if prev["diff"] else tag("p", "no changes", class_="muted")]
    parts.append(tag("h2", "Code"))
    if files is None:
        parts.append(tag("p", p.get("files_error") or "the code is not available", class_="error"))
    for path, text in (files or {}).items():
        parts.append(code_view(file_index[path], path, text, [f for f in findings if f.get("file") == path]))
    return layout(f"Plugin {p['name']} {p['version']}", join(parts), caller)


# Jobs and releases --------------------------------------------------------------------------------

def jobs_page(caller: Caller, jobs: list[dict[str, Any]]) -> str:
    rows = [(tag("code", j["id"]), j["name"], j["submitted_by"],
             badge(j["status"], STATUS_KIND.get(j["status"], "")), j["phase"],
             j.get("error_class"), ", ".join(j["inputs"]), j["recipient"], when(j["created_at"]),
             duration(j["started_at"], j["finished_at"]),
             link(ui("releases", j["release_id"]), "release") if j["release_id"] else None,
             j.get("reason") or None)
            for j in jobs]
    body = table(["id", "name", "submitted by", "status", "phase", "error", "inputs", "recipient",
                  "submitted", "ran for", "release", "reason (owners)"], rows, "no jobs you may see")
    return layout("Jobs", body, caller)


def _review_state(r: dict[str, Any]) -> Safe:
    if r.get("rejected_by"):
        return badge("rejected by " + ", ".join(r["rejected_by"]), "bad")
    if r["pending_review"]:
        return badge("waits for " + ", ".join(r["pending_review"]), "warn")
    return badge("downloadable", "ok")


def releases_page(caller: Caller, releases: list[dict[str, Any]]) -> str:
    rows = [(link(ui("releases", r["id"]), r["id"]), tag("code", r["job_id"]), r["recipient"],
             ", ".join(r["review_by"]) or None, _review_state(r), len(r["artifacts"]), when(r["created_at"]))
            for r in releases]
    body = table(["release", "job", "recipient", "reviewed by owners of", "state", "artifacts", "created"],
                 rows, "no releases you may see")
    return layout("Releases", body, caller)


def release_page(caller: Caller, r: dict[str, Any]) -> str:
    manifest = r["manifest"]
    checks = manifest.get("checks", []) if isinstance(manifest, dict) else []
    check_rows = [(badge("passed", "ok") if c.get("passed") else badge("failed", "bad"), c.get("name"),
                   c.get("detail")) for c in checks if isinstance(c, dict)]
    art_rows = [(tag("code", a["name"]), f"{a['size']:,} B") for a in r["artifacts"]]
    parts = [
        facts([("job", tag("code", r["job_id"])), ("recipient", r["recipient"]),
               ("created", when(r["created_at"])),
               ("reviewed by owners of", ", ".join(r["review_by"]) or None),
               ("approved for", ", ".join(r["approved_by"]) or None), ("state", _review_state(r)),
               *[(f"rejected for {d}", reason or None)
                 for d, reason in sorted(r.get("rejection_reasons", {}).items())]]),
    ]
    if r["pending_review"] and not r.get("rejected_by"):
        parts += [tag("h2", "Approve or reject (with the CLI, as the owner of a dataset it waits for)"),
                  command(f"cleanroom release approve {r['id']}\n"
                          f"cleanroom release reject {r['id']} --reason \"...\"")]
    parts += [tag("h2", "Release checks"),
              table(["result", "check", "detail"], check_rows, "no checks recorded"),
              tag("h2", "Artifacts (encrypted to the recipient and the input owners)"),
              table(["name", "size"], art_rows, "no artifacts"),
              tag("h2", "Manifest"), pre(manifest),
              tag("h2", "Receipt (signed by the runner)"), pre(r["receipt"])]
    return layout(f"Release {r['id']}", join(parts), caller)


# Audit --------------------------------------------------------------------------------------------

def audit_page(caller: Caller, events: list[dict[str, Any]], total: int, check: dict[str, Any]) -> str:
    if check["ok"]:
        banner = tag("p", f"The hash chain verifies: {check['count']} events, head "
                          f"{check['head']['hash'][:16]} (seq {check['head']['seq']}).", class_="banner ok")
    else:
        banner = tag("p", f"The hash chain is BROKEN at event {check['broken_at']}: {check['reason']}",
                     class_="banner bad")
    rows = [(e["seq"], None, None, tag("span", "redacted (not about you)", class_="muted"), None, None,
             tag("code", e["hash"][:16])) if e.get("redacted") else
            (e["seq"], when(e["ts"]), e["actor"], tag("code", e["action"]),
             join([e["object_type"], " ", tag("code", e["object_id"])]),
             tag("code", json.dumps(e["details"], sort_keys=True)) if e["details"] else None,
             tag("code", e["hash"][:16]))
            for e in reversed(events)]
    parts = [banner, tag("p", f"The latest {len(events)} of {total} events, newest first. Verify the chain "
                              "on your machine with: cleanroom audit verify", class_="muted"),
             table(["seq", "time", "actor", "action", "object", "details", "hash"], rows, "no events")]
    return layout("Audit log", join(parts), caller)


# API reference (when the operator turns it on) -----------------------------------------------------

def api_docs_page(schema: dict[str, Any]) -> str:
    rows = []
    for path, methods in sorted(schema.get("paths", {}).items()):
        for method, op in methods.items():
            params = ", ".join(f"{p.get('name')} ({p.get('in')})" for p in op.get("parameters", []))
            rows.append((tag("code", method.upper()), tag("code", path), op.get("summary"),
                         op.get("description"), params or None))
    body = join([tag("p", f"{schema.get('info', {}).get('description', '')} The machine-readable schema is "
                          "at /openapi.json.", class_="muted"),
                 table(["method", "path", "summary", "description", "parameters"], rows, "no routes")])
    return layout(f"API reference (cleanroom {schema.get('info', {}).get('version', '')})", body)
