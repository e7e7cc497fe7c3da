"""`cleanroom review`: an owner's review pages, served from the owner's own machine.

The room's server can show a release's checks but never its content: only members hold the keys. This
small server runs on the owner's machine, talks to the room with the owner's profile (`cleanroom.Client`),
decrypts each release with the SDK's `get_result` (the receipt's signature under the pinned room key,
then every artifact against the receipt's `outputs`) and shows what leaves beside the checks. Approve and
reject sign here, with the SDK's `approve_release` / `reject_release`, exactly as the CLI does.

Who can drive it: it listens on 127.0.0.1 only, answers only requests whose Host is that address (or
localhost) and whose path starts with a random per-run token, and refuses a POST unless the browser says
it comes from the page itself (Origin, Sec-Fetch-Site). Pages carry a CSP that allows no script at all
and only the page's own style, and are never cached (the content is plaintext).
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from cleanroom.client import RECEIPT_FILE, Client, manifest_sha256
from cleanroom.crypto import digest
from cleanroom.errors import CleanroomError, ValidationError
from cleanroom.local import review_pages as pages

__all__ = ["ReviewApp", "ReviewServer", "decrypt_release", "open_browser"]

HOST = "127.0.0.1"
TOKEN_BYTES = 24
MAX_FORM_BYTES = 4096
TEXT_SHOWN_BYTES = 64 * 1024
MAX_REASON = 2000
SECURITY_HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src '{pages.CSS_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    # same-origin: the page's own form posts carry its Origin (checked below); nothing leaves for elsewhere
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# Content ----------------------------------------------------------------------------------------


def decrypt_release(client: Client, ref: str) -> dict[str, Any]:
    """A release's content, decrypted on this machine by the SDK's `get_result` (which checks the receipt
    and every artifact against it) into a private temporary folder that is removed at once."""
    with tempfile.TemporaryDirectory(prefix="cleanroom-review-") as tmp:
        client.get_result(ref, tmp)
        root = Path(tmp)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        model = model_facts(root / "model.skops") if "model.skops" in files else None
    files.pop(RECEIPT_FILE, None)
    return read_content(files, model)


def read_content(files: dict[str, bytes], model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Released files as the page shows them: tables as rows, statistics, metrics, the card, other text."""
    out: dict[str, Any] = {
        "tables": {},
        "statistics": None,
        "metrics": None,
        "card": None,
        "model": model,
        "other": {},
        "artifacts": [],
    }
    for name, data in sorted(files.items()):
        out["artifacts"].append({"name": name, "bytes": len(data), "sha256": digest(data)})
        text = _text(data)
        if name.startswith("aggregates/") and name.endswith(".csv") and text is not None:
            out["tables"][name.removeprefix("aggregates/").removesuffix(".csv")] = list(csv.reader(io.StringIO(text)))
        elif name == "sample_and_aggregate.json" and _json(text) is not None:
            out["statistics"] = _json(text)
        elif name == "metrics.json" and isinstance(_json(text), dict):
            out["metrics"] = _json(text)
        elif name == "model_card.md" and text is not None:
            out["card"] = text
        elif name != "model.skops":
            parsed = _json(text) if name.endswith(".json") else None
            out["other"][name] = (
                (json.dumps(parsed, indent=2, sort_keys=True) if parsed is not None else text)
                if text is not None and len(data) <= TEXT_SHOWN_BYTES
                else None
            )
    return out


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def model_facts(path: Path) -> dict[str, Any]:
    """What a released model holds, read with `cleanroom.modelio.load_model` (skops, allow-listed types):
    coefficients of linear models by feature, or feature importances, and the scalar parameters."""
    import numpy as np

    from cleanroom.modelio import load_model

    try:
        fitted = load_model(path)
    except CleanroomError as exc:
        return {"error": exc.message}
    features = [str(f) for f in getattr(fitted, "feature_names_in_", [])]
    out: dict[str, Any] = {
        "params": sorted(
            (k, v)
            for k, v in fitted.get_params(deep=False).items()
            if v is None or isinstance(v, str | int | float | bool)
        )
    }
    coef = getattr(fitted, "coef_", None)
    if coef is not None:
        matrix = np.atleast_2d(np.asarray(coef, dtype=float))
        if matrix.shape[1] == len(features):
            classes = [str(c) for c in getattr(fitted, "classes_", [])]
            columns = (
                ["coefficient"]
                if matrix.shape[0] == 1
                else (
                    [f"class {c}" for c in classes]
                    if len(classes) == matrix.shape[0]
                    else [f"output {i}" for i in range(matrix.shape[0])]
                )
            )
            intercept = np.atleast_1d(np.asarray(getattr(fitted, "intercept_", 0.0), dtype=float)).tolist()
            out["coefficients"] = {
                "columns": columns,
                "rows": [(f, matrix[:, i].tolist()) for i, f in enumerate(features)],
                "intercept": (intercept * len(columns))[: len(columns)] if len(intercept) == 1 else intercept,
            }
    importances = getattr(fitted, "feature_importances_", None)
    if coef is None and importances is not None and len(importances) == len(features):
        out["importances"] = [(f, float(v)) for f, v in zip(features, importances, strict=True)]
    return out


# The app ----------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class ReviewApp:
    """The pages and the two form actions, as a function of (method, path, headers, body)."""

    def __init__(self, client: Client, *, token: str | None = None) -> None:
        self.client = client
        self.token = token or secrets.token_urlsafe(TOKEN_BYTES)
        self.port = 0
        self.base = f"/{self.token}/"
        self._verified: dict[tuple[str, str], dict[str, Any]] = {}  # (release, manifest sha256) -> content
        self._lock = threading.Lock()  # one owner, one room: requests take turns

    # -- entry ------------------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], read_body: Callable[[int], bytes]) -> Response:
        hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        if headers.get("host", "") not in hosts:  # another name resolving here (DNS rebinding): not ours
            return self._error(403, "this page answers only on " + f"http://{HOST}:{self.port}", token_ok=False)
        url = urlsplit(target)
        first, _, rest = url.path.removeprefix("/").partition("/")
        if not hmac.compare_digest(first.encode(), self.token.encode()):
            return self._error(
                403, "open the address that `cleanroom review` printed (it holds this run's token)", token_ok=False
            )
        parts = [unquote(p) for p in rest.split("/") if p]
        with self._lock:
            try:
                if method in ("GET", "HEAD"):
                    return self._get(parts, parse_qs(url.query))
                if method == "POST":
                    return self._post(parts, headers, read_body)
                return self._error(405, "method not allowed")
            except CleanroomError as exc:
                message = exc.message + (f" ({exc.hint})" if exc.hint else "")
                return self._error(exc.status_code if 400 <= exc.status_code < 600 else 500, message)

    def _who(self) -> str:
        me = self.client.whoami()
        return f"{me['name']} ({', '.join(me.get('roles', []))})"

    def _html(self, body: str, status: int = 200) -> Response:
        return Response(status, body, {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS})

    def _error(self, status: int, message: str, *, token_ok: bool = True) -> Response:
        if not token_ok:
            return self._html(pages.error_page(status, message), status)
        return self._html(pages.error_page(status, message, base=self.base, who=self._who()), status)

    def _redirect(self, location: str) -> Response:
        return Response(303, "", {"Location": location, **SECURITY_HEADERS})

    # -- pages ------------------------------------------------------------------------------------
    def _get(self, parts: list[str], query: dict[str, list[str]]) -> Response:
        match parts:
            case []:
                return self._html(self.index())
            case ["releases", release_id]:
                done = (query.get("done") or [""])[0]
                notice = {
                    "approved": "Approved: your signed approval was sent to the room.",
                    "rejected": "Rejected: your signed rejection was sent to the room.",
                }.get(done)
                return self._html(self.release(release_id, notice=notice))
        return self._error(404, "there is no such page")

    def _mine(self) -> tuple[str, dict[str, dict[str, Any]]]:
        me = self.client.whoami()["name"]
        return me, {d["name"]: d for d in self.client.list_datasets()}

    def index(self) -> str:
        me, datasets = self._mine()
        mine = {n for n, d in datasets.items() if d["owner"] == me}
        jobs = {j["id"]: j for j in self.client.list_jobs()}
        pending: list[dict[str, Any]] = []
        decided: list[dict[str, Any]] = []
        for r in self.client.list_releases():
            inputs = sorted(_inputs(r))
            if not (mine & (set(inputs) | set(r["review_by"]))):
                continue
            job = jobs.get(r["job_id"], {})
            row = {**r, "inputs": inputs, "job_name": job.get("name"), "submitted_by": job.get("submitted_by")}
            waits = any(d in mine for d in r["pending_review"]) and not r.get("rejected_by")
            (pending if waits else decided).append(row)
        return pages.index_page(pending, decided, base=self.base, who=self._who())

    def content(self, release: dict[str, Any]) -> dict[str, Any]:
        """The release's content, decrypted and checked once per manifest."""
        key = (release["id"], manifest_sha256(release["manifest"]))
        if key not in self._verified:
            self._verified[key] = decrypt_release(self.client, release["id"])
        return self._verified[key]

    def release(self, ref: str, *, notice: str | None = None, error: str | None = None) -> str:
        release = self.client.get_release(ref)
        job = self.client.get_job(release["job_id"])
        me, datasets = self._mine()
        mine = sorted(n for n, d in datasets.items() if d["owner"] == me)
        body = release.get("receipt", {}).get("body", {})
        ran = {n: d.get("policy_version") for n, d in (body.get("datasets") or {}).items() if isinstance(d, dict)}
        content, content_error = None, None
        try:
            content = self.content(release)
        except CleanroomError as exc:  # a bad receipt or artifact: shown, and nothing can be approved
            content_error = f"The content could not be checked and decrypted here: {exc.message}"
        decisions = []
        for name in sorted(set(release["review_by"]) | (set(ran) & set(mine))):
            state = (
                "approved"
                if name in release["approved_by"]
                else "rejected"
                if name in release["rejected_by"]
                else "waits"
                if name in release["pending_review"]
                else "not held (review = false)"
            )
            decisions.append(
                {
                    "dataset": name,
                    "owner": datasets.get(name, {}).get("owner"),
                    "state": state,
                    "reason": release.get("rejection_reasons", {}).get(name),
                    "ran_under": ran.get(name),
                    "current": datasets.get(name, {}).get("policy_version"),
                }
            )
        view = {
            "release": release,
            "job": job,
            "receipt": release.get("receipt") or {},
            "content": content,
            "content_error": content_error,
            "notice": notice,
            "error": error,
            "mine": mine,
            "decisions": decisions,
            "fingerprint": self.client.room_keys()["fingerprint"],
            "manifest_sha256": manifest_sha256(release["manifest"]),
            "action": f"{self.base}releases/{quote(release['id'], safe='')}",
            "can_decide": any(d in mine for d in release["pending_review"]) and not release.get("rejected_by"),
            "keys": _group_keys(job),
            "plugin_approvals": self._plugin_approvals(body, mine, datasets, me),
            "earlier": self._earlier(release),
        }
        return pages.release_page(view, base=self.base, who=self._who())

    def _plugin_approvals(
        self, body: dict[str, Any], mine: list[str], datasets: dict[str, dict[str, Any]], me: str
    ) -> list[dict[str, Any]]:
        """Your latest approval of each plugin that ran, per input of yours, against the current policy:
        an approval under an older policy version or other data no longer lets a job run."""
        rows = []
        inputs = [n for n in (body.get("datasets") or {}) if n in mine]
        for pid, label in (body.get("plugins") or {}).items():
            if not inputs:
                break
            approvals = self.client.get_plugin(pid).get("approvals", [])
            for name in inputs:
                ds = datasets[name]
                given = sorted(
                    (a for a in approvals if a["dataset"] == name and a["org"] == me),
                    key=lambda a: a.get("created_at") or 0,
                )
                a = given[-1] if given else None
                if a is None:
                    state = "not approved"
                elif a.get("revoked_at"):
                    state = "revoked"
                elif a["decision"] != "approve":
                    state = "rejected"
                elif a["policy_version"] != ds["policy_version"] or a.get("dataset_sha256") != ds.get("sha256"):
                    state = "stale"
                else:
                    state = "current"
                rows.append(
                    {
                        "plugin": label,
                        "dataset": name,
                        "state": state,
                        "policy_version": a["policy_version"] if a else None,
                        "current": ds["policy_version"],
                    }
                )
        return rows

    def _earlier(self, release: dict[str, Any]) -> list[dict[str, Any]]:
        """Earlier releases over any of the same datasets: a new table may difference against them."""
        inputs = _inputs(release)
        out = []
        for r in self.client.list_releases():
            if r["id"] != release["id"] and _inputs(r) & inputs and r["created_at"] <= release["created_at"]:
                out.append({**r, "inputs": sorted(_inputs(r))})
        return out

    # -- actions ----------------------------------------------------------------------------------
    def _post(self, parts: list[str], headers: dict[str, str], read_body: Callable[[int], bytes]) -> Response:
        own = f"http://{headers.get('host', '')}"
        site = headers.get("sec-fetch-site")
        if headers.get("origin") != own or (site is not None and site != "same-origin"):
            return self._error(
                403, "refused: this form was not sent from this page (cross-origin?). Reload the page and try again."
            )
        match parts:
            case ["releases", release_id, ("approve" | "reject") as verb]:
                pass
            case _:
                return self._error(404, "there is no such action")
        form = _read_form(headers, read_body)
        if form is None:
            return self._error(400, "the form is malformed or too large")
        release = self.client.get_release(release_id)
        shown = manifest_sha256(release["manifest"])
        if not hmac.compare_digest(form.get("manifest", ""), shown) or (release["id"], shown) not in self._verified:
            # the release changed since the page showed it, or its content was never checked here
            return self._html(
                self.release(
                    release_id,
                    error="Nothing was signed: the release is not the one this page showed you. Review it again below.",
                ),
                409,
            )
        if verb == "approve":
            self.client.approve_release(release["id"], expect_manifest_sha256=shown)
        else:
            reason = form.get("reason", "").strip()
            if not reason or len(reason) > MAX_REASON:
                raise ValidationError(f"a rejection needs a reason of 1 to {MAX_REASON} characters")
            self.client.reject_release(release["id"], reason=reason, expect_manifest_sha256=shown)
        return self._redirect(f"{self.base}releases/{quote(release['id'], safe='')}?done={verb}d")


def _inputs(release: dict[str, Any]) -> set[str]:
    body = (release.get("receipt") or {}).get("body") or {}
    return set(body.get("datasets") or {}) | set(release.get("review_by") or [])


def _group_keys(job: dict[str, Any]) -> dict[str, list[str]]:
    """Each aggregate table's group-by columns, from the job's signed spec (the table's name is the step's)."""
    keys = {}
    for step in (job.get("spec") or {}).get("steps", []):
        params = step.get("params") or {}
        if isinstance(params.get("name"), str) and isinstance(params.get("group_by"), list):
            keys[params["name"]] = [str(c) for c in params["group_by"]]
    return keys


def _read_form(headers: dict[str, str], read_body: Callable[[int], bytes]) -> dict[str, str] | None:
    if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    try:
        length = int(headers.get("content-length", ""))
    except ValueError:
        return None
    if not 0 <= length <= MAX_FORM_BYTES:
        return None
    try:
        fields = parse_qs(read_body(length).decode("utf-8"), max_num_fields=5)
    except (ValueError, UnicodeDecodeError):
        return None
    return {k: v[0] for k, v in fields.items()}


# The server -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "cleanroom-review"
    sys_version = ""

    def _serve(self, method: str) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.server.app.handle(method, self.path, headers, self.rfile.read)
        data = response.body.encode()
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._serve("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # request lines hold the token: keep them out of logs


class ReviewServer(ThreadingHTTPServer):
    """The review pages on 127.0.0.1 (`port` 0: a free one); `url` holds this run's token."""

    daemon_threads = True

    def __init__(self, client: Client, *, port: int = 0, token: str | None = None) -> None:
        self.app = ReviewApp(client, token=token)
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as exc:
            raise ValidationError(
                f"cannot listen on {HOST}:{port}: {exc.strerror}",
                hint="choose another --port, or leave it out to take a free one",
            ) from exc
        self.app.port = int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.app.port}{self.app.base}"


def open_browser(url: str, folder: Path) -> bool:
    """Open `url` without putting the token on a command line other users can read: the browser is given
    a private file (0600, in `folder`) that redirects to it."""
    import webbrowser

    page = folder / "open-review.html"
    page.touch(mode=0o600)
    page.write_text(
        f'<!doctype html><meta http-equiv="refresh" content="0;url={pages.h(url)}">'
        f'<a href="{pages.h(url)}">cleanroom review</a>'
    )
    return webbrowser.open(page.as_uri())
