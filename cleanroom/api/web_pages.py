"""HTML for the review page: small functions from view dicts to escaped markup, no template engine.

Every value that reaches the page goes through `h()` (`web_render`), which escapes anything that is not
`Safe` (markup built here). Plugin code, names, findings, reasons and check details are attacker-controlled.
Approvals are shown against each dataset's current policy version and data: one given for an older one
is `stale` (a job can no longer rely on it), never `current`.
"""

from __future__ import annotations

import json
from typing import Any

from cleanroom.api.authz import Caller
from cleanroom.api.web_render import (
    CSS,
    STATUS_KIND,
    Safe,
    badge,
    breakable,
    command,
    details,
    duration,
    facts,
    h,
    ident,
    join,
    link,
    pre,
    size,
    table,
    tag,
    ui,
    when,
    yes_no,
)
from cleanroom.crypto import canonical_json, digest
from cleanroom.sandbox.vocabulary import PID

MOCK_ROWS_SHOWN = 100
CATEGORIES_SHOWN = 30
# Replaced by the browser's CSRF token after rendering. Escaped values never contain "<".
CSRF_PLACEHOLDER = "<!--csrf-->"
CSRF_INPUT = f'<input type="hidden" name="csrf" value="{CSRF_PLACEHOLDER}">'


NAV = (
    ("datasets", "Datasets"),
    ("plugins", "Plugins"),
    ("jobs", "Jobs"),
    ("releases", "Releases"),
    ("audit", "Audit log"),
)


def layout(title: str, body: Any, caller: Caller | None = None) -> str:
    nav = join(link(ui(path), label) for path, label in NAV) if caller else Safe("")
    who = Safe("")
    if caller:
        who = Safe(
            f'<span class="who">{h(caller.name)} ({h(", ".join(caller.roles))})</span>'
            '<form method="post" action="/ui/logout">'
            f'{CSRF_INPUT}<button type="submit">Log out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} · cleanroom</title><style>{CSS}</style></head><body>"
        f'<header><span class="brand">cleanroom</span>{nav}{who}</header>'
        f"<main><h1>{h(title)}</h1>{h(body)}</main></body></html>"
    )


def login_page(error: str | None = None) -> str:
    err = tag("p", error, class_="error") if error else Safe("")
    form = Safe(
        '<form class="login" method="post" action="/ui/login">'
        + CSRF_INPUT
        + '<label for="token">Your org token</label>'
        '<input id="token" name="token" type="password" autocomplete="off" required maxlength="300">'
        '<button type="submit">Log in</button>'
        '<p class="muted">The token stays in an HttpOnly cookie of this browser until you log out.'
        " Approving needs your org's signing key: use the CLI.</p></form>"
    )
    return layout("Log in to the review page", Safe(err + form))


def error_page(caller: Caller | None, status: int, message: str) -> str:
    return layout(f"Error {status}", tag("p", message, class_="error"), caller)


def _bytes(n: int | None, label: str = "") -> Any:
    """A size, or the muted dash when the caller may not see it (exact sizes are the owner's)."""
    return None if n is None else join([size(n), f" {label}" if label else ""])


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# Approvals against the current policy -------------------------------------------------------------


def approval_state(a: dict[str, Any], current: dict[str, dict[str, Any]]) -> Safe:
    """Whether an approval (or rejection) still holds: revoked, stale (given for another policy version or
    other data than the dataset's current ones: a job can no longer rely on it), or current.
    `current`: dataset name -> {policy_version, sha256} of the datasets still in the room."""
    if a.get("revoked_at"):
        return badge("revoked", "warn")
    now = current.get(a["dataset"])
    if now is None:
        return badge("stale: the dataset was withdrawn", "warn", long=True)
    if a.get("policy_version") != now["policy_version"]:
        return badge(
            f"stale: given for v{a.get('policy_version')}, the current policy is v{now['policy_version']}",
            "warn",
            long=True,
        )
    if a.get("dataset_sha256") and a["dataset_sha256"] != now["sha256"]:
        return badge("stale: given for other data", "warn", long=True)
    return badge("current", "ok")


def holds(a: dict[str, Any], current: dict[str, dict[str, Any]]) -> bool:
    now = current.get(a["dataset"])
    return (
        now is not None
        and not a.get("revoked_at")
        and a.get("policy_version") == now["policy_version"]
        and (not a.get("dataset_sha256") or a["dataset_sha256"] == now["sha256"])
    )


def approved_for(plugin: dict[str, Any], current: dict[str, dict[str, Any]]) -> Safe | None:
    """The datasets a plugin is approved for; approvals for an older policy or data marked stale."""
    given = [a for a in plugin["approvals"] if a["decision"] == "approve" and not a["revoked_at"]]
    valid = sorted({a["dataset"] for a in given if holds(a, current)})
    stale = sorted({a["dataset"] for a in given if not holds(a, current)} - set(valid))
    if not valid and not stale:
        return None
    return join(
        [
            ", ".join(valid),
            " " if valid and stale else "",
            *[join([badge(f"{d}: stale", "warn", long=True), " "]) for d in stale],
        ]
    )


# Datasets -----------------------------------------------------------------------------------------


def datasets_page(caller: Caller, datasets: list[dict[str, Any]]) -> str:
    rows = [
        (
            link(ui("datasets", d["name"]), d["name"]),
            d["owner"],
            d["row_count"],
            len(d["columns"]),
            f"v{d['policy_version']}",
            _bytes(d["size"]),
            when(d["created_at"]),
        )
        for d in datasets
    ]
    body = table(
        ["name", "owner", "rows", "columns", "policy", "encrypted size", "created"],
        rows,
        "no datasets in the room yet",
        nowrap=(2, 3, 4, 5),
    )
    return layout("Datasets", body, caller)


def published(column: dict[str, Any], rule: dict[str, Any]) -> Any:
    """What the schema publishes of a column (declared in the policy, nothing computed from rows), as
    `cleanroom dataset show` prints it: bounds, categories, time zone."""
    stats = _dict(column.get("stats"))
    parts: list[Any] = []
    bounds = rule.get("bounds")
    lo, hi = (
        (stats.get("min"), stats.get("max"))
        if stats.get("min") is not None or stats.get("max") is not None
        else (bounds if isinstance(bounds, list) and len(bounds) == 2 else (None, None))
    )
    if lo is not None or hi is not None:
        parts.append(join(["bounds ", tag("span", f"[{lo}, {hi}]", class_="nowrap")]))
    categories = stats.get("categories") or rule.get("domain")
    if isinstance(categories, list) and categories:
        shown = ", ".join(map(str, categories[:CATEGORIES_SHOWN]))
        more = f" … and {len(categories) - CATEGORIES_SHOWN} more" if len(categories) > CATEGORIES_SHOWN else ""
        parts.append(join([f"{len(categories)} categories: ", shown, more]))
    if column.get("timezone"):
        parts.append(f"time zone {column['timezone']}")
    if not parts:
        return tag("span", "nothing published" if column.get("stats") == {} else "-", class_="muted")
    return join(parts, "; ")


def schema_rows(columns: list[dict[str, Any]], policy: dict[str, Any]) -> list[tuple[Any, ...]]:
    rules = _dict(policy.get("columns"))
    rows = []
    for c in columns:
        name = c.get("name")
        rule = _dict(rules.get(str(name)))
        kind = rule.get("rule") or ("join key" if name == PID else "allowed")
        rows.append(
            (
                tag("code", name),
                c.get("type"),
                yes_no(c.get("nullable", True)),
                badge(kind, "warn" if kind == "never_output" else "info" if kind != "allowed" else ""),
                published(c, rule),
            )
        )
    return rows


def dataset_page(
    caller: Caller,
    ds: dict[str, Any],
    budget: dict[str, Any] | None = None,
    approvals: list[dict[str, Any]] | None = None,
) -> str:
    """One dataset; `approvals`: the plugin approvals in force on it that the caller may see (plugin,
    plugin_name, plugin_version, org, policy_version, dataset_sha256, created_at, revoked_at)."""
    schema_cols = [c for c in ds["schema"].get("columns", []) if isinstance(c, dict)]
    names = [str(c.get("name")) for c in schema_cols]
    mock = ds["mock"][:MOCK_ROWS_SHOWN]
    extra = sorted({k for row in mock for k in row} - set(names))
    header = names + extra
    mock_rows = [[row.get(k) if k in row else Safe("") for k in header] for row in mock]
    current = {ds["name"]: {"policy_version": ds["policy_version"], "sha256": ds["sha256"]}}
    approval_rows = [
        (
            link(ui("plugins", a["plugin"]), f"{a['plugin_name']} {a['plugin_version']}"),
            ident(a["plugin"], 16),
            a["org"],
            f"v{a['policy_version']}",
            when(a["created_at"]),
            approval_state({**a, "dataset": ds["name"]}, current),
        )
        for a in approvals or []
    ]
    parts = [
        tag("p", ds["description"]) if ds["description"] else Safe(""),
        facts(
            [
                ("owner", ds["owner"]),
                ("rows", ds["row_count"]),
                ("ciphertext sha256", ident(ds["sha256"])),
                ("encrypted size", _bytes(ds["size"])),
                ("policy version", ds["policy_version"]),
                ("policy sha256", ident(ds["policy_sha256"])),
                ("created", when(ds["created_at"])),
                ("dropped before upload", ", ".join(ds["dropped"]) or None),
            ]
        ),
        _budget_facts(budget),
        tag("h2", "Schema"),
        table(
            ["column", "type", "nullable", "policy rule", "published (declared in the policy)"],
            schema_rows(schema_cols, ds.get("policy") or {}),
            nowrap=(1, 2),
        ),
        tag("h2", f"Plugins approved for this dataset (against policy v{ds['policy_version']})"),
        table(
            ["plugin", "id", "approved by", "for policy", "when", "state"],
            approval_rows,
            "no plugin approvals you may see",
            nowrap=(3,),
        ),
        tag("h2", f"Policy (version {ds['policy_version']})"),
        pre(ds["policy_text"]),
        tag("h2", f"Mock sample ({len(mock)} of {len(ds['mock'])} rows shown; synthetic, not real data)"),
        table(header, mock_rows, "no mock rows", scroll=True),
    ]
    return layout(f"Dataset {ds['name']}", join(parts), caller)


def _budget_facts(budget: dict[str, Any] | None) -> Safe:
    """The privacy budget: mode, spent and left (shown to the owner, the allowed recipients and staff)."""
    if budget is None:
        return Safe("")
    if budget["mode"] == "exact":
        return join(
            [
                tag("h2", "Privacy"),
                facts([("mode", "exact (require_dp = false): every release is reviewed by the owner")]),
            ]
        )
    return join(
        [
            tag("h2", "Privacy budget"),
            facts(
                [
                    ("mode", "differential privacy"),
                    ("epsilon left", f"{budget['remaining_epsilon']:g} of {budget['epsilon']:g}"),
                    ("delta left", f"{budget['remaining_delta']:g} of {budget['delta']:g}"),
                    ("per job at most", f"epsilon {budget['job_epsilon']:g}, delta {budget['job_delta']:g}"),
                    ("charges", len(budget["charges"])),
                ]
            ),
        ]
    )


# Plugins ------------------------------------------------------------------------------------------


def plugins_page(caller: Caller, plugins: list[dict[str, Any]], current: dict[str, dict[str, Any]]) -> str:
    """The plugins the caller may see; `current`: dataset name -> {policy_version, sha256} now."""
    rows = [
        (
            link(ui("plugins", p["id"]), p["name"]),
            p["version"],
            p["kind"],
            p["submitted_by"],
            badge(p["blocking_findings"], "bad") if p["blocking_findings"] else badge(0, "ok"),
            approved_for(p, current),
            ident(p["id"], 16),
            when(p["created_at"]),
        )
        for p in plugins
    ]
    body = table(
        ["name", "version", "kind", "submitted by", "blocking findings", "approved for", "id", "submitted"],
        rows,
        "no plugins you may see",
        nowrap=(1, 2, 4),
    )
    return layout("Plugins", body, caller)


def _finding_row(f: dict[str, Any]) -> Safe:
    sev = str(f.get("severity", ""))
    cls = "blocking" if sev == "blocking" else "warning"
    text = join(
        [badge(sev, "bad" if sev == "blocking" else "warn"), " ", tag("b", f.get("rule")), ": ", f.get("message")]
    )
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
        rows.append(Safe(f'<tr class="line{flag}" id="f{index}-L{n}"><td class="n">{n}</td><td>{h(line)}</td></tr>'))
        rows.extend(_finding_row(f) for f in here)
    for leftover in by_line.values():  # findings past the last line
        rows.extend(_finding_row(f) for f in leftover)
    return Safe(f'{tag("h3", path, id=f"f{index}")}<table class="code">{"".join(rows)}</table>')


def diff_view(text: str) -> Safe:
    out = []
    for line in text.splitlines():
        cls = (
            "add"
            if line.startswith("+") and not line.startswith("+++")
            else ("del" if line.startswith("-") and not line.startswith("---") else None)
        )
        out.append(tag("span", line, class_=cls) if cls else h(line))
    return Safe(f'<pre class="diff">{chr(10).join(out)}</pre>')


def plugin_page(caller: Caller, p: dict[str, Any], own_datasets: list[str], current: dict[str, dict[str, Any]]) -> str:
    """A plugin in full; `current`: dataset name -> {policy_version, sha256} now (approvals against it)."""
    findings = p["review"].get("findings", [])
    files: dict[str, str] | None = p.get("files")
    file_index = {path: i for i, path in enumerate(files or {})}

    def where(f: dict[str, Any]) -> Safe:
        label = f"{f.get('file')}:{f.get('line')}" if f.get("line") else str(f.get("file") or "")
        i = file_index.get(str(f.get("file")))
        if i is None:
            return h(label or None)
        return link(f"#f{i}-L{f['line']}" if isinstance(f.get("line"), int) else f"#f{i}", label)

    order = sorted(
        findings,
        key=lambda f: (
            f.get("severity") != "blocking",
            str(f.get("file")),
            f.get("line") if isinstance(f.get("line"), int) else 0,
        ),
    )
    finding_rows = [
        (
            badge(f.get("severity"), "bad" if f.get("severity") == "blocking" else "warn"),
            where(f),
            f.get("rule"),
            f.get("message"),
        )
        for f in order
    ]
    approval_rows = [
        (
            badge(a["decision"], STATUS_KIND.get(a["decision"], "")),
            a["dataset"],
            a["org"],
            f"v{a['policy_version']}",
            a["reason"] or None,
            when(a["created_at"]),
            approval_state(a, current),
        )
        for a in p["approvals"]
    ]
    targets = own_datasets or ["<dataset>"]
    cmds = "\n".join(f"cleanroom plugin approve {p['id']} --dataset {d}" for d in targets)
    cmds += f"\ncleanroom plugin reject {p['id']} --dataset {targets[0]} --reason '...'"
    blocking = p["blocking_findings"]
    prev = p.get("diff_against")
    if prev:
        replaces = (
            f"It replaces {p['name']} {prev['version']} ({prev['id'][:16]}), also by "
            f"{prev.get('submitted_by', p['submitted_by'])}, approved for "
            f"{', '.join(prev.get('approved_for', [])) or 'no dataset any more'}."
        )
    else:
        replaces = (
            f"It replaces nothing: {p['submitted_by']} has no earlier approved version of "
            f"{p['name']}. Review it as new code."
        )
    parts = [
        tag("p", f"Submitted by {p['submitted_by']}. {replaces}", class_="banner lineage"),
        facts(
            [
                ("id (sha256 of the bundle)", tag("code", p["id"])),
                ("kind", p["kind"]),
                ("submitted by", p["submitted_by"]),
                ("size", size(p["size"])),
                ("submitted", when(p["created_at"])),
                ("approved for", approved_for(p, current)),
            ]
        ),
        tag("p", f"{blocking} blocking finding(s): approving this code needs a careful look.", class_="banner bad")
        if blocking
        else Safe(""),
        tag("h2", "Approve or reject (with the CLI: it signs with your org's key)"),
        command(cmds),
        tag("h2", f"Review findings ({len(findings)})"),
        table(["severity", "where", "rule", "message"], finding_rows, "no findings", nowrap=(0,)),
        tag("h2", "Approvals (against each dataset's current policy and data)"),
        table(
            ["decision", "dataset", "by", "policy", "reason", "when", "state"],
            approval_rows,
            "no approvals yet",
            nowrap=(0, 3),
        ),
        tag("h2", "Manifest"),
        plugin_manifest(p["manifest"]),
    ]
    if prev:
        parts += [
            tag(
                "h2",
                f"Changes since the last approved version {prev['version']} ({prev['id'][:16]}) "
                f"by {prev.get('submitted_by', p['submitted_by'])}",
            ),
            diff_view(prev["diff"]) if prev["diff"] else tag("p", "no changes", class_="muted"),
        ]
    parts.append(tag("h2", "Code"))
    if files is None:
        parts.append(tag("p", p.get("files_error") or "the code is not available", class_="error"))
    for path, text in (files or {}).items():
        parts.append(code_view(file_index[path], path, text, [f for f in findings if f.get("file") == path]))
    return layout(f"Plugin {p['name']} {p['version']}", join(parts), caller)


# Jobs and releases --------------------------------------------------------------------------------


def _job_status(j: dict[str, Any]) -> Safe:
    """Status, with the phase and error class under it when the caller sees them."""
    more = [x for x in (j["phase"], j.get("error_class")) if x]
    return join(
        [
            badge(j["status"], STATUS_KIND.get(j["status"], "")),
            *[join([Safe("<br>"), tag("span", breakable(x), class_="muted")]) for x in more],
        ]
    )


def jobs_page(caller: Caller, jobs: list[dict[str, Any]]) -> str:
    """The jobs table, fixed to the window's width: long names break at their punctuation, ids are cut."""
    rows = [
        (
            ident(j["id"]),
            j["name"],
            j["submitted_by"],
            _job_status(j),
            join((breakable(i) for i in j["inputs"]), ", "),
            j["recipient"],
            join([when(j["created_at"], wrap=True), Safe("<br>"), duration(j["started_at"], j["finished_at"])])
            if j["started_at"] is not None and j["finished_at"] is not None
            else when(j["created_at"], wrap=True),
            link(ui("releases", j["release_id"]), "release", title=j["release_id"]) if j["release_id"] else None,
            j.get("reason") or None,
        )
        for j in jobs
    ]
    body = table(
        [
            "id",
            "name",
            "submitted by",
            "status, phase, error",
            "inputs",
            "recipient",
            "submitted, ran for",
            "release",
            "reason (owners)",
        ],
        rows,
        "no jobs you may see",
        cls="jobs",
    )
    return layout("Jobs", body, caller)


def _review_state(r: dict[str, Any]) -> Safe:
    if r.get("rejected_by"):
        return badge("rejected by " + ", ".join(r["rejected_by"]), "bad", long=True)
    if r["pending_review"]:
        return badge("waits for " + ", ".join(r["pending_review"]), "warn", long=True)
    return badge("downloadable", "ok")


def releases_page(caller: Caller, releases: list[dict[str, Any]]) -> str:
    rows = [
        (
            link(ui("releases", r["id"]), ident(r["id"])),
            ident(r["job_id"]),
            r["recipient"],
            ", ".join(r["review_by"]) or None,
            _review_state(r),
            len(r["artifacts"]),
            when(r["created_at"]),
        )
        for r in releases
    ]
    body = table(
        ["release", "job", "recipient", "reviewed by owners of", "state", "artifacts", "created"],
        rows,
        "no releases you may see",
        nowrap=(5,),
    )
    return layout("Releases", body, caller)


def artifact_kind(name: str) -> str:
    if name.startswith("aggregates/"):
        return "aggregate table"
    return {
        "model.skops": "model",
        "model_card.md": "model card",
        "metrics.json": "model metrics",
        "sample_and_aggregate.json": "statistics",
    }.get(name, name.rpartition(".")[2] if "." in name else "file")


def output_rows(manifest: dict[str, Any], artifacts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """One row per artifact: the manifest's plaintext size and sha256 beside the ciphertext size the
    room holds (the server never sees the plaintext)."""
    outputs, encrypted = _dict(manifest.get("outputs")), {a["name"]: a for a in artifacts}
    rows = []
    for name in sorted(set(outputs) | set(encrypted)):
        out = _dict(outputs.get(name))
        stored = encrypted.get(name)
        rows.append(
            (
                tag("code", name),
                artifact_kind(name),
                size(out.get("bytes")),
                ident(out.get("sha256"), 16),
                size(stored["size"]) if stored else badge("not stored", "bad"),
            )
        )
    return rows


def check_rows(checks: Any) -> list[tuple[Any, ...]]:
    return (
        [
            (
                badge("passed", "ok") if c.get("passed") else badge("failed", "bad"),
                tag("code", c.get("name")),
                c.get("detail"),
            )
            for c in checks
            if isinstance(c, dict)
        ]
        if isinstance(checks, list)
        else []
    )


def _controls(controls: dict[str, Any]) -> tuple[Any, Any]:
    """The isolation controls of one phase: those the engine reported enforced, those it did not."""
    flags = {k: v for k, v in controls.items() if isinstance(v, bool) and k != "warm"}
    off = sorted(k for k, v in flags.items() if not v)
    on = badge(f"all {len(flags)} enforced", "ok") if flags and not off else f"{len(flags) - len(off)} of {len(flags)}"
    return on, badge("not enforced: " + ", ".join(off), "bad", long=True) if off else None


def isolation_rows(isolation: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = []
    for phase, controls in sorted(isolation.items()):
        if not isinstance(controls, dict):
            continue
        on, off = _controls(controls)
        limits = _dict(controls.get("limits"))
        limit_text = ", ".join(f"{k} {v}" for k, v in sorted(limits.items()) if v is not None) or None
        waived = ", ".join(map(str, controls.get("waived") or []))
        rows.append(
            (
                phase,
                on,
                off,
                badge("waived: " + waived, "bad", long=True) if waived else None,
                limit_text,
                ident(controls.get("image"), 19),
                ident(controls.get("seccomp_profile"), 16),
                yes_no(controls.get("warm")),
            )
        )
    return rows


def receipt_section(receipt: dict[str, Any], manifest: Any) -> Safe:
    """The signed receipt's body as tables: what it binds, and the signature to check on your machine."""
    body = _dict(receipt.get("body"))
    if not body:
        return tag("p", "no receipt recorded", class_="muted")
    plugins, inputs, dropped = (_dict(body.get(k)) for k in ("plugins", "datasets", "dropped_columns"))
    bound = body.get("manifest_sha256")
    shown = digest_of(manifest)
    manifest_check = (
        join(
            [
                ident(bound),
                " ",
                badge("the manifest shown here", "ok")
                if bound == shown
                else badge("NOT the manifest shown here", "bad"),
            ]
        )
        if bound
        else None
    )
    approvals = [a for a in body.get("approvals") or [] if isinstance(a, str)]
    keys = _dict(receipt.get("room_keys"))
    return join(
        [
            facts(
                [
                    ("job", ident(body.get("job_id"))),
                    ("spec sha256", ident(body.get("spec_sha256"))),
                    ("sandbox image", ident(body.get("image"))),
                    ("epsilon spent", body.get("epsilon_spent")),
                    ("manifest sha256", manifest_check),
                    (
                        "approvals that covered the job",
                        join([f"{len(approvals)} ", join((ident(a, 12) for a in approvals), " ")]),
                    ),
                ]
            ),
            tag("h3", "Plugins that ran"),
            table(
                ["plugin", "id (sha256 of the bundle)"],
                [(name, link(ui("plugins", pid), ident(pid))) for pid, name in sorted(plugins.items())],
                "no plugins",
            ),
            tag("h3", "Datasets"),
            table(
                ["dataset", "policy version", "ciphertext sha256", "policy sha256", "left out (never_output)"],
                [
                    (
                        name,
                        f"v{d.get('policy_version')}",
                        ident(d.get("sha256")),
                        ident(d.get("policy_sha256")),
                        ", ".join(map(str, dropped.get(name) or [])) or None,
                    )
                    for name, d in sorted(inputs.items())
                    if isinstance(d, dict)
                ],
                "no datasets",
            ),
            tag("h3", "Isolation, per phase, as the Docker engine reported it"),
            table(
                [
                    "phase",
                    "controls",
                    "not enforced",
                    "waived by the operator",
                    "limits",
                    "image",
                    "seccomp profile",
                    "warm",
                ],
                isolation_rows(_dict(body.get("isolation"))),
                "no isolation reported",
                nowrap=(0, 1, 7),
            ),
            tag("h3", "Signature"),
            facts(
                [
                    ("signature (Ed25519)", ident(receipt.get("signature"))),
                    ("room key fingerprint", tag("code", keys.get("fingerprint")) if keys.get("fingerprint") else None),
                    (
                        "check it",
                        "on your machine: cleanroom result get verifies it against the room key pinned in your "
                        "profile; cleanroom receipt verify receipt.json checks a saved one",
                    ),
                ]
            ),
        ]
    )


def digest_of(value: Any) -> str | None:
    try:
        return digest(value)
    except (TypeError, ValueError):
        return None


def release_page(caller: Caller, r: dict[str, Any]) -> str:
    manifest = _dict(r["manifest"])
    checks = _list(manifest.get("checks"))
    passed = sum(1 for c in checks if isinstance(c, dict) and c.get("passed"))
    parts = [
        facts(
            [
                ("job", ident(r["job_id"])),
                ("recipient", r["recipient"]),
                ("created", when(r["created_at"])),
                ("reviewed by owners of", ", ".join(r["review_by"]) or None),
                ("approved for", ", ".join(r["approved_by"]) or None),
                ("state", _review_state(r)),
                *[
                    (f"rejected for {d}", reason or None)
                    for d, reason in sorted(r.get("rejection_reasons", {}).items())
                ],
                ("epsilon spent", manifest.get("epsilon_spent")),
                ("encrypted to", ", ".join(map(str, manifest.get("encrypted_to") or [])) or None),
            ]
        ),
    ]
    if r["pending_review"] and not r.get("rejected_by"):
        parts += [
            tag("h2", "Approve or reject (with the CLI, as the owner of a dataset it waits for)"),
            tag(
                "p",
                "This page shows the checks, never the content: the artifacts are encrypted and the "
                "room holds no key. To see exactly what leaves, decrypted on your machine, and "
                "approve from there, run cleanroom review.",
                class_="muted",
            ),
            command(
                f"cleanroom review\ncleanroom release approve {r['id']}\n"
                f'cleanroom release reject {r["id"]} --reason "..."'
            ),
        ]
    parts += [
        tag("h2", f"Release checks ({passed} of {len(checks)} passed)"),
        table(["result", "check", "detail"], check_rows(checks), "no checks recorded", nowrap=(0,)),
        tag("h2", "Outputs"),
        tag(
            "p",
            "Plaintext sizes and hashes are the manifest's (the room never sees the plaintext); the "
            "encrypted size is the ciphertext the room holds, encrypted to the recipient and the "
            "input owners.",
            class_="muted",
        ),
        table(
            ["name", "kind", "plaintext size", "sha256", "encrypted size"],
            output_rows(manifest, r["artifacts"]),
            "no outputs",
            nowrap=(1, 2, 4),
        ),
        tag("h2", "Receipt (signed by the runner)"),
        receipt_section(_dict(r["receipt"]), r["manifest"]),
        details(
            "Raw manifest and receipt (JSON)",
            join([tag("h3", "manifest"), pre(r["manifest"]), tag("h3", "receipt"), pre(r["receipt"])]),
        ),
    ]
    return layout(f"Release {r['id']}", join(parts), caller)


def plugin_manifest(manifest: Any) -> Safe:
    """A plugin's manifest (cleanroom-plugin.toml as parsed) as a definition list."""
    if not isinstance(manifest, dict):
        return pre(manifest)
    return facts(
        [
            (
                k,
                v
                if isinstance(v, str | int | float) and not isinstance(v, bool)
                else tag("code", canonical_json(v).decode()),
            )
            for k, v in sorted(manifest.items())
        ]
    )


# Audit --------------------------------------------------------------------------------------------


def audit_page(caller: Caller, events: list[dict[str, Any]], total: int, check: dict[str, Any]) -> str:
    if check["ok"]:
        banner = tag(
            "p",
            f"The hash chain verifies: {check['count']} events, head "
            f"{check['head']['hash'][:16]} (seq {check['head']['seq']}).",
            class_="banner ok",
        )
    else:
        banner = tag(
            "p", f"The hash chain is BROKEN at event {check['broken_at']}: {check['reason']}", class_="banner bad"
        )
    rows = [
        (
            e["seq"],
            None,
            None,
            tag("span", "redacted (not about you)", class_="muted"),
            None,
            None,
            tag("code", e["hash"][:16]),
        )
        if e.get("redacted")
        else (
            e["seq"],
            when(e["ts"]),
            e["actor"],
            tag("code", e["action"]),
            join([e["object_type"], " ", tag("code", e["object_id"])]),
            tag("code", json.dumps(e["details"], sort_keys=True)) if e["details"] else None,
            tag("code", e["hash"][:16]),
        )
        for e in reversed(events)
    ]
    parts = [
        banner,
        tag(
            "p",
            f"The latest {len(events)} of {total} events, newest first. Verify the chain "
            "on your machine with: cleanroom audit verify",
            class_="muted",
        ),
        table(["seq", "time", "actor", "action", "object", "details", "hash"], rows, "no events"),
    ]
    return layout("Audit log", join(parts), caller)


# API reference (when the operator turns it on) -----------------------------------------------------


def api_docs_page(schema: dict[str, Any]) -> str:
    rows = []
    for path, methods in sorted(schema.get("paths", {}).items()):
        for method, op in methods.items():
            params = ", ".join(f"{p.get('name')} ({p.get('in')})" for p in op.get("parameters", []))
            rows.append(
                (
                    tag("code", method.upper()),
                    tag("code", path),
                    op.get("summary"),
                    op.get("description"),
                    params or None,
                )
            )
    body = join(
        [
            tag(
                "p",
                f"{schema.get('info', {}).get('description', '')} The machine-readable schema is at /openapi.json.",
                class_="muted",
            ),
            table(["method", "path", "summary", "description", "parameters"], rows, "no routes"),
        ]
    )
    return layout(f"API reference (cleanroom {schema.get('info', {}).get('version', '')})", body)
