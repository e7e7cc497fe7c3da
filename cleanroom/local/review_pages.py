"""HTML of `cleanroom review`: small functions from views to escaped markup, no scripts, no template engine.

Column names, group keys, job names, reasons and check details come from other orgs: every value goes
through `h()`, which escapes anything that is not `Safe` (markup built here) and draws hidden characters
(bidi controls, zero-width and other format characters) as visible `<U+202E>` markers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from cleanroom.markup import Safe as Safe  # re-exported for the pages
from cleanroom.markup import h as h


def join(parts: Iterable[Any], sep: str = "") -> Safe:
    return Safe(sep.join(h(p) for p in parts))


def tag(name: str, content: Any = "", **attrs: Any) -> Safe:
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{h(v)}"' for k, v in attrs.items() if v is not None)
    return Safe(f"<{name}{attr}>{h(content)}</{name}>")


def badge(text: Any, kind: str = "") -> Safe:
    return tag("span", text, class_=f"badge {kind}".strip())


def when(ts: Any) -> Safe:
    if not isinstance(ts, int | float):
        return h(None)
    return tag("span", time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + " UTC", class_="nowrap")


def size(n: Any) -> Safe:
    if not isinstance(n, int):
        return h(None)
    human = f"{n:,} bytes" if n < 10_000 else f"{n / 1024:,.1f} KiB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MiB"
    return tag("span", human, class_="nowrap", title=f"{n} bytes")


def number(value: Any) -> Safe:
    """A number as released: exact values keep their digits; floats show up to 6 significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return h(value)
    if isinstance(value, float) and not math.isfinite(value):
        return h(str(value))
    return h(f"{value:.6g}" if isinstance(value, float) else str(value))


def table(
    headers: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    empty: str = "nothing",
    *,
    cls: str | None = None,
    header_cls: Sequence[str | None] | None = None,
    cell_cls: Sequence[str | None] | None = None,
) -> Safe:
    body = []
    for row in rows:
        cells = "".join(
            tag("td", c, class_=cell_cls[i] if cell_cls and i < len(cell_cls) else None) for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return tag("p", empty, class_="muted")
    head = "".join(
        tag("th", x, class_=header_cls[i] if header_cls and i < len(header_cls) else None)
        for i, x in enumerate(headers)
    )
    attr = f' class="{h(cls)}"' if cls else ""
    inner = f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return Safe(f'<div class="scroll">{inner}</div>')


def facts(pairs: Iterable[tuple[str, Any]]) -> Safe:
    return Safe("<dl>" + "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in pairs) + "</dl>")


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:center;flex-wrap:wrap}
header a{color:#cfe0ff;text-decoration:none}header .brand{font-weight:700;color:#fff}
header .who{margin-left:auto;color:#c9ced8}
main{padding:1em 1.5em 3em;max-width:1200px;box-sizing:border-box}
h1{font-size:1.5em;margin:.4em 0;overflow-wrap:anywhere}
h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #dde1e8}
h3{font-size:1em;margin:1.2em 0 .3em;overflow-wrap:anywhere}
a{color:#1a56c4}.nowrap{white-space:nowrap}.muted{color:#7a8394}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;background:#fff;margin:.4em 0;min-width:40%}
th,td{border:1px solid #dde1e8;padding:.3em .6em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#eef1f5;font-weight:600}th.key{background:#dde9ff}td.key{background:#f3f7ff;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{background:#fff;border:1px solid #dde1e8;padding:.6em;margin:.4em 0;white-space:pre-wrap;
 overflow-wrap:anywhere}
code,pre,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2em 1em;margin:.4em 0}
dt{color:#5b6578}dd{margin:0;overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 .5em;border-radius:.8em;background:#e4e7ec;font-size:.85em;
 white-space:nowrap}
.badge.ok{background:#d5f2dc;color:#14532d}.badge.bad{background:#fde0e0;color:#8a1414}
.badge.warn{background:#fff1c2;color:#6b4e00}.badge.info{background:#dde9ff;color:#173d8a}
.banner{padding:.6em 1em;border-radius:.3em;margin:.6em 0}
.banner.ok{background:#d5f2dc}.banner.bad{background:#fde0e0}.banner.warn{background:#fff1c2}
.banner.info{background:#eef1f5;border-left:4px solid #1a56c4}
.columns{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:1.5em}
.panel{background:#fff;border:1px solid #dde1e8;border-radius:.3em;padding:.2em 1em .8em;min-width:0}
.panel h2{margin-top:.8em}
form.decide{display:flex;gap:.8em;align-items:flex-end;flex-wrap:wrap;margin:.6em 0}
form.decide label{display:flex;flex-direction:column;gap:.2em;flex:1 1 20em}
form.decide input[type=text]{font:inherit;padding:.35em;border:1px solid #b9c0cc;border-radius:.2em}
button{font:inherit;padding:.4em 1.2em;cursor:pointer;border-radius:.25em;border:1px solid #7a8394;background:#fff}
button.approve{background:#14632d;border-color:#14632d;color:#fff}
button.reject{background:#fff;border-color:#8a1414;color:#8a1414}
.error{background:#fde0e0;color:#8a1414;padding:.6em 1em;border-radius:.3em}
.hidden-char{background:#8a1414;color:#fff;border-radius:.2em;padding:0 .15em;font-weight:700}
@media (max-width:900px){.columns{grid-template-columns:minmax(0,1fr)}}
"""
CSS_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()


def layout(title: str, body: Any, *, base: str, who: str) -> str:
    nav = tag("a", "Releases to review", href=base)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} · cleanroom review</title><style>{CSS}</style></head><body>"
        f'<header><span class="brand">cleanroom review</span>{nav}'
        f'<span class="who">{h(who)} · on this machine</span></header>'
        f"<main><h1>{h(title)}</h1>{h(body)}</main></body></html>"
    )


def error_page(status: int, message: str, *, base: str | None = None, who: str = "") -> str:
    body = tag("p", message, class_="error")
    if base is None:  # no token: say nothing about the room
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>cleanroom review</title>'
            f"<style>{CSS}</style></head><body><main><h1>Error {status}</h1>{body}</main></body></html>"
        )
    return layout(f"Error {status}", body, base=base, who=who)


def release_link(base: str, release_id: str, text: Any) -> Safe:
    return tag("a", text, href=f"{base}releases/{quote(release_id, safe='')}")


# The list ---------------------------------------------------------------------------------------


def _state(r: dict[str, Any]) -> Safe:
    if r.get("rejected_by"):
        return badge("rejected for " + ", ".join(r["rejected_by"]), "bad")
    if r.get("pending_review"):
        return badge("waits for " + ", ".join(r["pending_review"]), "warn")
    return badge("released to " + str(r.get("recipient")), "ok")


def index_page(pending: list[dict[str, Any]], decided: list[dict[str, Any]], *, base: str, who: str) -> str:
    def rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (
                release_link(base, r["id"], r["id"]),
                tag("code", r["job_id"]),
                r.get("job_name"),
                r.get("submitted_by"),
                r["recipient"],
                ", ".join(r.get("inputs", [])) or None,
                _state(r),
                when(r.get("created_at")),
            )
            for r in items
        ]

    headers = ["release", "job", "name", "analyst", "recipient", "inputs", "state", "created"]
    body = join(
        [
            tag(
                "p",
                "These pages run on your machine: each release's content is downloaded encrypted and "
                "decrypted here with your org's key, and an approval is signed here, as `cleanroom release "
                "approve` does. The room's server never sees the content.",
                class_="banner info",
            ),
            tag("h2", f"Waiting for your review ({len(pending)})"),
            table(headers, rows(pending), "no release waits for your review"),
            tag("h2", f"Decided or not yours to decide ({len(decided)})"),
            table(headers, rows(decided), "none"),
        ]
    )
    return layout("Releases over your data", body, base=base, who=who)


# One release ------------------------------------------------------------------------------------


def _check_rows(checks: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (
            badge("passed", "ok") if c.get("passed") else badge("failed", "bad"),
            tag("code", c.get("name")),
            c.get("detail"),
        )
        for c in checks
        if isinstance(c, dict)
    ]


def aggregate_table(name: str, rows: list[list[str]], keys: Sequence[str]) -> Safe:
    """A released table: group keys first as released, values right-aligned, suppressed cells marked."""
    if not rows:
        return join([tag("h3", f"aggregates/{name}.csv"), tag("p", "empty file", class_="muted")])
    header, data = rows[0], rows[1:]
    key_cols = {i for i, col in enumerate(header) if col in keys}
    cells = []
    for row in data:
        out: list[Any] = []
        for i, value in enumerate(row):
            if value == "" and i not in key_cols:
                out.append(tag("span", "suppressed", class_="muted", title="fewer than k units: not released"))
            else:
                out.append(value)
        cells.append(out)
    head_cls = ["key" if i in key_cols else None for i in range(len(header))]
    cell_cls = ["key" if i in key_cols else "num" for i in range(len(header))]
    heads = [
        join([col, Safe(" "), badge("group key", "info")]) if i in key_cols else col for i, col in enumerate(header)
    ]
    caption = f"{len(data)} group(s)" + (f", grouped by {', '.join(keys)}" if keys else "")
    return join(
        [
            tag("h3", f"aggregates/{name}.csv"),
            tag("p", caption, class_="muted"),
            table(heads, cells, "no rows", cls="content", header_cls=head_cls, cell_cls=cell_cls),
        ]
    )


def _model_section(content: dict[str, Any]) -> Safe:
    metrics = content.get("metrics")
    model = content.get("model") or {}
    if metrics is None and not model and content.get("card") is None:
        return Safe("")
    parts: list[Any] = [tag("h3", "Model")]
    if isinstance(metrics, dict):
        parts.append(
            facts(
                [
                    (k, metrics.get(k))
                    for k in (
                        "estimator",
                        "task",
                        "target",
                        "n_train",
                        "n_holdout",
                        "holdout_fraction",
                        "seed",
                        "epsilon",
                    )
                    if metrics.get(k) is not None
                ]
            )
        )
    coef = model.get("coefficients")
    if coef:
        heads = ["feature", *coef["columns"]]
        rows = [(tag("code", name), *[number(v) for v in values]) for name, values in coef["rows"]]
        rows.append((tag("i", "intercept"), *[number(v) for v in coef["intercept"]]))
        parts += [
            tag("h3", "Coefficients (read from model.skops here)"),
            table(heads, rows, cls="content", cell_cls=[None] + ["num"] * len(coef["columns"])),
        ]
    elif model.get("importances"):
        parts += [
            tag("h3", "Feature importances (read from model.skops here)"),
            table(
                ["feature", "importance"],
                [(tag("code", n), number(v)) for n, v in model["importances"]],
                cls="content",
                cell_cls=[None, "num"],
            ),
        ]
    if model.get("error"):
        parts.append(tag("p", f"model.skops: {model['error']}", class_="error"))
    if isinstance(metrics, dict) and isinstance(metrics.get("metrics"), dict):
        parts += [
            tag("h3", "Holdout metrics"),
            table(
                ["metric", "value"],
                [(k, number(v)) for k, v in metrics["metrics"].items()],
                cls="content",
                cell_cls=[None, "num"],
            ),
        ]
    if model.get("params"):
        parts += [
            tag("h3", "Parameters"),
            table(["parameter", "value"], [(tag("code", k), json.dumps(v)) for k, v in model["params"]]),
        ]
    if content.get("card") is not None:
        parts += [tag("h3", "model_card.md (as released)"), tag("pre", content["card"])]
    return join(parts)


def _statistics_section(doc: Any) -> Safe:
    if not isinstance(doc, dict):
        return Safe("")
    outputs = doc.get("outputs")
    rows = []
    for o in outputs if isinstance(outputs, list) else []:
        if not isinstance(o, dict):
            continue
        interval = o.get("interval_95")
        rows.append(
            (
                tag("code", o.get("name")),
                number(o.get("value")),
                join([number(interval[0]), " to ", number(interval[1])])
                if isinstance(interval, list) and len(interval) == 2
                else None,
                join([number(o.get("lo")), " to ", number(o.get("hi"))]),
                number(o.get("noise_scale")),
            )
        )
    return join(
        [
            tag("h3", "Statistics (sample_and_aggregate.json)"),
            facts(
                [
                    (k, doc.get(k))
                    for k in ("mechanism", "aggregate", "blocks", "epsilon", "noise")
                    if doc.get(k) is not None
                ]
            ),
            table(
                ["output", "value", "95% interval", "declared range", "noise scale"],
                rows,
                "no outputs",
                cls="content",
                cell_cls=[None, "num", "num", "num", "num"],
            ),
        ]
    )


def content_section(content: dict[str, Any], keys: dict[str, list[str]]) -> Safe:
    """What leaves, decrypted here: tables, statistics, the model, other files, and the plaintext sizes."""
    parts: list[Any] = []
    for name, rows in content["tables"].items():
        parts.append(aggregate_table(name, rows, keys.get(name, [])))
    parts.append(_statistics_section(content.get("statistics")))
    parts.append(_model_section(content))
    for name, text in content.get("other", {}).items():
        parts += [
            tag("h3", name),
            tag("pre", text) if text is not None else tag("p", "binary file: see its size below", class_="muted"),
        ]
    art_rows = [
        (
            tag("code", a["name"]),
            size(a["bytes"]),
            tag("code", a["sha256"][:16]),
            badge("matches the signed receipt", "ok"),
        )
        for a in content["artifacts"]
    ]
    parts += [
        tag("h3", "Artifacts (plaintext sizes)"),
        table(["name", "size", "sha256", "check"], art_rows, "no artifacts"),
    ]
    return join(parts)


def decision_section(
    r: dict[str, Any],
    decisions: list[dict[str, Any]],
    mine: list[str],
    *,
    action: str,
    manifest_sha256: str,
    can_decide: bool,
) -> Safe:
    rows = []
    for d in decisions:
        if d["state"] == "approved":
            state = badge("approved", "ok")
        elif d["state"] == "rejected":
            state = join([badge("rejected", "bad"), " ", d.get("reason") or ""])
        else:
            state = badge("waits", "warn")
        ran, now = d.get("ran_under"), d.get("current")
        policy: Any = f"v{now}" if now is not None else None
        if ran is not None and now is not None and ran != now:
            policy = join([badge(f"changed: the job ran under v{ran}, the current policy is v{now}", "warn")])
        elif ran is not None:
            policy = join([f"v{ran} ", badge("current", "ok")])
        rows.append(
            (
                tag("code", d["dataset"]),
                d.get("owner"),
                policy,
                state,
                badge("yours", "info") if d["dataset"] in mine else None,
            )
        )
    parts: list[Any] = [table(["dataset", "owner", "policy version", "decision", ""], rows, "no review needed")]
    if can_decide:
        csrf = f'<input type="hidden" name="manifest" value="{h(manifest_sha256)}">'
        parts.append(
            Safe(
                f'<form class="decide" method="post" action="{h(action)}/approve">{csrf}'
                '<button type="submit" class="approve" id="approve">Approve and sign</button></form>'
                f'<form class="decide" method="post" action="{h(action)}/reject">{csrf}'
                "<label>Reason (kept with the rejection, for the owners)"
                '<input type="text" name="reason" id="reason" maxlength="2000" required></label>'
                '<button type="submit" class="reject" id="reject">Reject (final)</button></form>'
            )
        )
        parts.append(
            tag(
                "p",
                "Approving signs, with your org's key on this machine, the exact release shown "
                f"here (manifest sha256 {manifest_sha256[:16]}…), for "
                + ", ".join(d for d in r["pending_review"] if d in mine)
                + ". A rejection is final.",
                class_="muted",
            )
        )
    return join(parts)


def plugin_approval_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out = []
    for a in rows:
        if a["state"] == "current":
            state = badge("current", "ok")
        elif a["state"] == "stale":
            state = badge(f"for v{a['policy_version']}: the current policy is v{a['current']}", "warn")
        else:
            state = badge(a["state"], "bad" if a["state"] in ("revoked", "rejected") else "warn")
        out.append((tag("code", a["plugin"]), a["dataset"], state))
    return out


def release_page(v: dict[str, Any], *, base: str, who: str) -> str:
    r, job, receipt = v["release"], v["job"], v["receipt"]
    manifest = r["manifest"] if isinstance(r.get("manifest"), dict) else {}
    body = receipt.get("body", {}) if isinstance(receipt, dict) else {}
    parts: list[Any] = []
    if v.get("notice"):
        parts.append(tag("p", v["notice"], class_="banner ok"))
    if v.get("error"):
        parts.append(tag("p", v["error"], class_="error"))
    parts.append(
        facts(
            [
                ("job", join([tag("code", r["job_id"]), " ", job.get("name") or ""])),
                ("analyst", job.get("submitted_by")),
                ("recipient", r.get("recipient")),
                ("inputs", ", ".join(job.get("inputs") or body.get("datasets", {}) or []) or None),
                ("mode", "differential privacy" if (manifest.get("epsilon_spent") or 0) > 0 else "exact (reviewed)"),
                ("epsilon spent", manifest.get("epsilon_spent")),
                ("encrypted to", ", ".join(manifest.get("encrypted_to", [])) or None),
                ("created", when(r.get("created_at"))),
                ("receipt", join([badge("signature verified", "ok"), " room key ", tag("code", v.get("fingerprint"))])),
            ]
        )
    )
    content = v.get("content")
    content_html = (
        content_section(content, v.get("keys", {}))
        if content
        else tag("p", v.get("content_error") or "no content", class_="error")
    )
    checks = manifest.get("checks", [])
    parts.append(Safe('<div class="columns">'))
    parts.append(
        tag(
            "div",
            join([tag("h2", "What leaves (decrypted on this machine)"), content_html]),
            class_="panel",
            id="content",
        )
    )
    parts.append(
        tag(
            "div",
            join(
                [
                    tag("h2", "Your decision"),
                    decision_section(
                        r,
                        v["decisions"],
                        v["mine"],
                        action=v["action"],
                        manifest_sha256=v["manifest_sha256"],
                        can_decide=v["can_decide"] and content is not None,
                    ),
                    tag(
                        "h2",
                        f"Release checks ({sum(1 for c in checks if isinstance(c, dict) and c.get('passed'))} of "
                        f"{len(checks)} passed)",
                    ),
                    table(["result", "check", "detail"], _check_rows(checks), "no checks recorded", cls="checks"),
                    tag("h2", "Plugin approvals behind this job (against the current policy)"),
                    table(
                        ["plugin", "dataset", "your approval"],
                        plugin_approval_rows(v.get("plugin_approvals", [])),
                        "none of your datasets is an input",
                    ),
                ]
            ),
            class_="panel",
            id="checks",
        )
    )
    parts.append(Safe("</div>"))
    parts += [tag("h2", "Receipt (signed by the room key; checked here)"), _receipt(body)]
    earlier = v.get("earlier", [])
    parts += [
        tag("h2", f"Earlier releases over the same datasets ({len(earlier)})"),
        table(
            ["release", "job", "inputs", "state", "created"],
            [
                (
                    release_link(base, e["id"], e["id"]),
                    tag("code", e["job_id"]),
                    ", ".join(e.get("inputs", [])),
                    _state(e),
                    when(e.get("created_at")),
                )
                for e in earlier
            ],
            "none: this is the first",
        ),
    ]
    return layout(f"Release {r['id']}", join(parts), base=base, who=who)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _receipt(body: dict[str, Any]) -> Safe:
    plugins, datasets, isolation = (_dict(body.get(k)) for k in ("plugins", "datasets", "isolation"))
    iso_rows = []
    for phase, controls in sorted(isolation.items()):
        if not isinstance(controls, dict):
            continue
        missing = sorted(k for k, val in controls.items() if val is False and k != "warm")  # warm: a pool, fine
        waived = controls.get("waived") or []
        iso_rows.append(
            (
                phase,
                badge("every control reported", "ok")
                if not missing
                else badge("missing: " + ", ".join(missing), "bad"),
                ", ".join(map(str, waived)) or None,
            )
        )
    return join(
        [
            facts(
                [
                    ("job", tag("code", body.get("job_id"))),
                    ("spec sha256", tag("code", body.get("spec_sha256"))),
                    ("sandbox image", tag("code", body.get("image"))),
                    ("approvals that covered the job", len(body.get("approvals") or [])),
                    ("manifest sha256", tag("code", body.get("manifest_sha256"))),
                ]
            ),
            table(["plugin", "id"], [(name, tag("code", pid)) for pid, name in plugins.items()], "no plugins"),
            table(
                ["dataset", "policy version", "ciphertext sha256"],
                [
                    (name, f"v{d.get('policy_version')}", tag("code", d.get("sha256")))
                    for name, d in datasets.items()
                    if isinstance(d, dict)
                ],
                "no datasets",
            ),
            table(["phase", "isolation", "waived by the operator"], iso_rows, "no isolation reported"),
        ]
    )
