"""Dataset policies: parse the owner's TOML, keep a canonical form, combine the policies of a job.

Every error names the line of the offending key. tomllib gives values without positions, so
`TomlLines` finds keys in the text itself (headers, dotted keys, multi-line arrays).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from cleanroom.errors import PolicyError, ValidationError
from cleanroom.sandbox.hashing import digest
from cleanroom.sandbox.vocabulary import (
    DEFAULT_ESTIMATORS,
    KNOWN_ESTIMATORS,
    ORG_NAME,
    OUTPUT_KINDS,
    ROW_STORING_ESTIMATORS,
)

__all__ = [
    "DEFAULT_ESTIMATORS",
    "IDENTIFIER_PATTERNS",
    "KNOWN_ESTIMATORS",
    "OUTPUT_KINDS",
    "ROW_STORING_ESTIMATORS",
    "RULES",
    "ColumnRule",
    "EffectivePolicy",
    "Policy",
    "TomlLines",
    "combine",
    "looks_like_identifier",
    "parse_policy",
]

RULES = ("allowed", "join_only", "never_output")
MAX_DELTA = 1e-3
# DP is the default (PRIVACY-DESIGN.md section 0): a lifetime budget per dataset and a cap per job
DEFAULT_EPSILON, DEFAULT_DELTA = 3.0, 1e-6
DEFAULT_JOB_EPSILON, DEFAULT_JOB_DELTA = 1.0, 1e-7
MAX_DOMAIN = 1000
EXACT_MODE_NOTE = (
    "require_dp = false: exact (non-DP) releases, so every release of this dataset is held "
    "for the owner's review (review = true is forced)"
)

# ---------------------------------------------------------------------------------------------
# Where keys are in a TOML text

_PART = r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+'
_DOTTED = rf"(?:{_PART})(?:\s*\.\s*(?:{_PART}))*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _split(dotted: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in re.findall(_PART, dotted))


class TomlLines:
    """The line of every table and key of a TOML text; array-of-tables entries get an index."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self._where: dict[tuple[Any, ...], tuple[int, int]] = {}
        aot: dict[tuple[Any, ...], int] = {}
        table: tuple[Any, ...] = ()
        depth, fence, start, key = 0, "", 0, ()
        for n, line in enumerate(self.lines, 1):
            if fence:  # inside a multi-line string
                fence = "" if fence in line else fence
                continue
            if depth > 0:  # inside a multi-line array or inline table
                depth += self._depth(line)
                if depth <= 0:
                    self._where[key] = (start, n)
                continue
            if m := _HEADER.match(line):
                path: tuple[Any, ...] = ()
                for part in _split(m.group(2)):
                    path += (part,)
                    if path in aot and path != _split(m.group(2)):
                        path += (aot[path],)
                if m.group(1) == "[[":
                    aot[path] = aot.get(path, -1) + 1
                    path += (aot[path],)
                table = path
                self._remember(table, n, n)
            elif m := _ASSIGN.match(line):
                key, start, rest = table + _split(m.group(1)), n, line[m.end() :]
                self._remember(key, n, n)
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        fence = quote
                depth = 0 if fence else self._depth(rest)

    @staticmethod
    def _depth(text: str) -> int:
        text = _STRINGS.sub("", text).split("#", 1)[0]
        return text.count("[") + text.count("{") - text.count("]") - text.count("}")

    def _remember(self, path: tuple[Any, ...], first: int, last: int) -> None:
        for end in range(1, len(path) + 1):
            self._where.setdefault(path[:end], (first, last))

    def line_of(self, path: Iterable[Any], value: Any = None) -> int:
        """The line of `path` (or of its nearest known parent); of `value` if it is a string in it."""
        path = tuple(path)
        for end in range(len(path), 0, -1):
            if path[:end] in self._where:
                first, last = self._where[path[:end]]
                break
        else:
            return 1
        if isinstance(value, str):
            for n in range(first, last + 1):
                if re.search(rf"[\"']{re.escape(value)}[\"']", self.lines[n - 1]):
                    return n
        return first


def dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{part}" if out else part
    return out


class Checker:
    """Raises `error` with the line and dotted key of the offending value (no line for dicts)."""

    def __init__(self, lines: TomlLines | None, error: type[ValidationError] = PolicyError) -> None:
        self.lines, self.error = lines, error

    def fail(self, path: tuple[Any, ...], message: str, value: Any = None, after: str = "") -> NoReturn:
        line = self.lines.line_of(path, value) if self.lines else None
        where = f" at line {line}" if line else ""
        raise self.error(f"{message}{where}{after}", details={"line": line, "key": dotted(path)})

    def table(self, path: tuple[Any, ...], value: Any, known: Iterable[str], label: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"{label} must be a table, got {type_name(value)}")
        known = list(known)
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(known)})"
                self.fail(path + (key,), f"unknown key {key!r} in {label}", after=hint)
        return value

    def typed(self, path: tuple[Any, ...], value: Any, kind: str) -> Any:
        ok = {
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
            "string": isinstance(value, str),
            "list": isinstance(value, list),
        }[kind]
        if not ok:
            self.fail(path, f"{dotted(path)} must be {_KIND_LABEL[kind]}, got {type_name(value)}")
        return float(value) if kind == "number" else value

    def choice(self, path: tuple[Any, ...], item: str, allowed: Iterable[str], message: str) -> str:
        if item not in (allowed := list(allowed)):
            close = difflib.get_close_matches(item, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (one of: {', '.join(allowed)})"
            self.fail(path, message, item, hint)
        return item

    def names(
        self,
        path: tuple[Any, ...],
        value: Any,
        allowed: Iterable[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        what: str = "name",
    ) -> tuple[str, ...]:
        for item in self.typed(path, value, "list"):
            if not isinstance(item, str):
                self.fail(path, f"{dotted(path)} must be a list of strings, got {type_name(item)} in it")
            if allowed is not None:
                self.choice(path, item, allowed, f"unknown {what} {item!r} in {dotted(path)}")
            if pattern is not None and not pattern.fullmatch(item):
                self.fail(path, f"{item!r} in {dotted(path)} is not a valid {what}", item)
        return tuple(sorted(set(value)))


_KIND_LABEL = {
    "bool": "true or false",
    "int": "an integer",
    "number": "a finite number",
    "string": "a string",
    "list": "an array",
}


def type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def load_toml(text: str, what: str, error: type[ValidationError]) -> tuple[dict[str, Any], TomlLines]:
    """tomllib, with its syntax errors rephrased: "the policy is not valid TOML: ... at line 3"."""
    if not isinstance(text, str):
        raise error(f"the {what} must be text, got {type_name(text)}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raw = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", raw)
        line, column = (int(m.group(1)), int(m.group(2))) if m else (len(text.splitlines()) or 1, None)
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", raw)
        reason = reason[:1].lower() + reason[1:]
        where = f"line {line}, column {column}" if column else f"the end of the text (line {line})"
        raise error(
            f"the {what} is not valid TOML: {reason} at {where}", details={"line": line, "column": column, "key": None}
        ) from None
    return data, TomlLines(text)


# ---------------------------------------------------------------------------------------------
# The policy of one dataset


@dataclass(frozen=True)
class ColumnRule:
    name: str
    rule: str = "allowed"
    bounds: tuple[float, float] | None = None
    domain: tuple[str, ...] | None = None  # declared public categories (published; mock data uses them)


@dataclass(frozen=True)
class Policy:
    outputs: tuple[str, ...] = OUTPUT_KINDS
    k: int = 10
    epsilon: float = DEFAULT_EPSILON
    delta: float = DEFAULT_DELTA
    require_dp: bool = True
    job_epsilon: float = DEFAULT_JOB_EPSILON
    job_delta: float = DEFAULT_JOB_DELTA
    recipient_epsilon: float | None = None  # each recipient org's share of `epsilon` (None: all of it)
    recipients: tuple[str, ...] = ()
    review: bool = False
    estimators: tuple[str, ...] = tuple(sorted(DEFAULT_ESTIMATORS))
    allow_row_storing: bool = False
    max_model_bytes: int = 5_000_000
    columns: tuple[ColumnRule, ...] = ()
    identifiers_allow: tuple[str, ...] = ()
    limits: tuple[tuple[str, float], ...] = ()
    precision: int | None = None  # significant digits of released exact numbers (None: the default, 3)

    @property
    def exact(self) -> bool:
        """Exact (non-DP) releases: only when the owner said `require_dp = false` (review is then forced)."""
        return not self.require_dp

    def notes(self) -> list[str]:
        """What the parse decided that the text does not say outright (shown on upload and policy change)."""
        return (
            [EXACT_MODE_NOTE]
            if self.exact
            else [
                f"differential privacy: lifetime budget epsilon {self.epsilon:g}, delta {self.delta:g}; "
                f"at most epsilon {self.job_epsilon:g}, delta {self.job_delta:g} per job"
            ]
        )

    def column_rule(self, name: str) -> ColumnRule:
        """The rule of a column; columns the policy does not name are `allowed` without bounds."""
        return next((c for c in self.columns if c.name == name), ColumnRule(name))

    def columns_with(self, rule: str) -> tuple[str, ...]:
        return tuple(sorted(c.name for c in self.columns if c.rule == rule))

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form, every default filled in (its sha256 is the policy hash)."""
        return {
            "outputs": {"allowed": sorted(self.outputs)},
            "privacy": {
                "k": self.k,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "require_dp": self.require_dp,
                "job_epsilon": self.job_epsilon,
                "job_delta": self.job_delta,
                **({"recipient_epsilon": self.recipient_epsilon} if self.recipient_epsilon is not None else {}),
            },
            "release": {
                "recipients": sorted(self.recipients),
                "review": self.review,
                # only when set: policies without it keep their hash
                **({"precision": self.precision} if self.precision is not None else {}),
            },
            "models": {
                "estimators": sorted(self.estimators),
                "allow_row_storing": self.allow_row_storing,
                "max_model_bytes": self.max_model_bytes,
            },
            "columns": {
                c.name: {
                    "rule": c.rule,
                    "bounds": list(c.bounds) if c.bounds else None,
                    **({"domain": list(c.domain)} if c.domain is not None else {}),
                }
                for c in sorted(self.columns, key=lambda c: c.name)
            },
            "identifiers": {"allow": sorted(self.identifiers_allow)},
            # only when set, so that policies without limits keep the hash they had before limits existed
            **({"limits": dict(sorted(self.limits))} if self.limits else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Reload a stored `to_dict()`; as strict as `parse_policy` (nulls allowed where it emits them)."""
        return _build(dict(data), Checker(None))

    def sha256(self) -> str:
        """The policy's hash, stored and signed by owners: in its first form, non-ASCII escaped
        (`cleanroom.sandbox.hashing` says why)."""
        return digest(self.to_dict(), escape_non_ascii=True)


def parse_policy(text: str) -> Policy:
    """Parse and validate a dataset policy (TOML); `PolicyError` names the line of the problem."""
    data, lines = load_toml(text, "policy", PolicyError)
    return _build(data, Checker(lines))


_SCHEMA = {
    "outputs": ("allowed",),
    "privacy": ("k", "epsilon", "delta", "require_dp", "job_epsilon", "job_delta", "recipient_epsilon"),
    "release": ("recipients", "review", "precision"),
    "models": ("estimators", "allow_row_storing", "max_model_bytes"),
    "columns": None,
    "identifiers": ("allow",),
    "limits": ("memory_mb", "cpus", "timeout_seconds", "pids", "max_jobs_per_day"),
}
# Sandbox limits a policy may set; the runner applies the smallest of the room's and every input's.
# max_jobs_per_day is not a sandbox limit: the API counts an analyst org's jobs on the dataset
LIMIT_KINDS = {"memory_mb": "int", "cpus": "number", "timeout_seconds": "int", "pids": "int", "max_jobs_per_day": "int"}
LIMIT_FLOORS = {"memory_mb": 256, "cpus": 0.1, "timeout_seconds": 10, "pids": 16, "max_jobs_per_day": 1}


def _build(data: dict[str, Any], ck: Checker) -> Policy:
    ck.table((), data, _SCHEMA, "the policy")
    for name, value in data.items():
        if not isinstance(value, dict):
            ck.fail((name,), f"{name} must be a table ([{name}]), got {type_name(value)}")
    sect = {
        name: ck.table((name,), data.get(name, {}), keys, f"[{name}]")
        for name, keys in _SCHEMA.items()
        if keys is not None
    }
    out, priv, rel, mod = sect["outputs"], sect["privacy"], sect["release"], sect["models"]
    fields: dict[str, Any] = {}
    if "allowed" in out:
        fields["outputs"] = ck.names(("outputs", "allowed"), out["allowed"], OUTPUT_KINDS, what="output kind")
    if "k" in priv:
        fields["k"] = ck.typed(("privacy", "k"), priv["k"], "int")
        if fields["k"] < 2:
            ck.fail(("privacy", "k"), f"k must be at least 2 (got {fields['k']})")
    for key in ("epsilon", "delta", "job_epsilon", "job_delta", "recipient_epsilon"):
        if priv.get(key) is not None:
            fields[key] = value = ck.typed(("privacy", key), priv[key], "number")
            if value <= 0 or ("delta" in key and value > MAX_DELTA):
                bound = f"in (0, {MAX_DELTA:g}]" if "delta" in key else "greater than 0"
                ck.fail(("privacy", key), f"{key} must be {bound} (got {value:g})")
    flags = (("privacy", "require_dp"), ("release", "review"), ("models", "allow_row_storing"))
    for table, key in flags:
        if key in sect[table]:
            fields[key] = ck.typed((table, key), sect[table][key], "bool")
    for cap, total in (("job_epsilon", "epsilon"), ("job_delta", "delta")):
        cap_value = fields.get(cap, Policy.__dataclass_fields__[cap].default)
        total_value = fields.get(total, Policy.__dataclass_fields__[total].default)
        if cap_value > total_value:
            where = cap if cap in fields else total
            ck.fail(
                ("privacy", where),
                f"the per-job {total} ({cap} = {cap_value:g}) cannot exceed the "
                f"dataset's budget ({total} = {total_value:g})",
            )
    share = fields.get("recipient_epsilon")
    if share is not None and share > fields.get("epsilon", DEFAULT_EPSILON):
        ck.fail(
            ("privacy", "recipient_epsilon"),
            f"recipient_epsilon ({share:g}) cannot exceed the dataset's "
            f"budget (epsilon = {fields.get('epsilon', DEFAULT_EPSILON):g})",
        )
    if fields.get("require_dp") is False:
        fields["review"] = True  # exact mode: the owner sees every release before its recipient does
    if rel.get("precision") is not None:
        fields["precision"] = ck.typed(("release", "precision"), rel["precision"], "int")
        if not 1 <= fields["precision"] <= 15:
            ck.fail(
                ("release", "precision"), f"precision must be 1 to 15 significant digits (got {fields['precision']})"
            )
    if "recipients" in rel:
        fields["recipients"] = ck.names(("release", "recipients"), rel["recipients"], pattern=ORG_NAME, what="org name")
    if "estimators" in mod:
        fields["estimators"] = ck.names(("models", "estimators"), mod["estimators"], KNOWN_ESTIMATORS, what="estimator")
        for name in fields["estimators"]:
            if name in ROW_STORING_ESTIMATORS and not fields.get("allow_row_storing"):
                ck.fail(
                    ("models", "estimators"),
                    f"estimator {name!r} stores training rows in the model",
                    name,
                    ": set allow_row_storing = true in [models] to allow it",
                )
    if "max_model_bytes" in mod:
        fields["max_model_bytes"] = ck.typed(("models", "max_model_bytes"), mod["max_model_bytes"], "int")
        if fields["max_model_bytes"] < 1:
            ck.fail(("models", "max_model_bytes"), "max_model_bytes must be at least 1")
    columns = []
    for name, spec in data.get("columns", {}).items():
        path = ("columns", name)
        spec = ck.table(path, spec, ("rule", "bounds", "domain"), f"[columns.{dotted([name])}]")
        rule = ck.typed(path + ("rule",), spec.get("rule", "allowed"), "string")
        ck.choice(path + ("rule",), rule, RULES, f"unknown rule {rule!r} for column {name!r}")
        bounds = spec.get("bounds")
        if bounds is not None:
            ck.typed(path + ("bounds",), bounds, "list")
            if len(bounds) != 2:
                ck.fail(path + ("bounds",), f"bounds of column {name!r} must be [lo, hi]")
            lo, hi = (ck.typed(path + ("bounds",), b, "number") for b in bounds)
            if lo >= hi:
                ck.fail(path + ("bounds",), f"bounds of column {name!r} need lo < hi (got [{lo:g}, {hi:g}])")
            bounds = (lo, hi)
        domain = spec.get("domain")
        if domain is not None:
            items = ck.typed(path + ("domain",), domain, "list")
            if not items or len(items) > MAX_DOMAIN or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in items):
                ck.fail(
                    path + ("domain",),
                    f"domain of column {name!r} must be a list of 1 to {MAX_DOMAIN} "
                    "non-empty strings (the public categories)",
                )
            if len(set(items)) != len(items):
                ck.fail(path + ("domain",), f"domain of column {name!r} repeats a value")
            domain = tuple(items)
        if rule != "allowed" or bounds or domain is not None:  # a no-op entry would change the hash, not the meaning
            columns.append(ColumnRule(name, rule, bounds, domain))
    if "allow" in sect["identifiers"]:
        fields["identifiers_allow"] = ck.names(
            ("identifiers", "allow"), sect["identifiers"]["allow"], what="column name"
        )
    limits = []
    for key, value in sect["limits"].items():
        number = ck.typed(("limits", key), value, LIMIT_KINDS[key])
        if number < LIMIT_FLOORS[key]:
            ck.fail(("limits", key), f"{key} must be at least {LIMIT_FLOORS[key]:g} (got {number:g})")
        limits.append((key, int(number) if LIMIT_KINDS[key] == "int" else float(number)))
    return Policy(columns=tuple(sorted(columns, key=lambda c: c.name)), limits=tuple(sorted(limits)), **fields)


# ---------------------------------------------------------------------------------------------
# The policy of a job: the most restrictive rule of its inputs


@dataclass(frozen=True)
class EffectivePolicy:
    k: int
    outputs: tuple[str, ...]
    estimators: tuple[str, ...]
    allow_row_storing: bool
    max_model_bytes: int
    never_output: tuple[str, ...]
    join_only: tuple[str, ...]
    bounds: tuple[tuple[str, tuple[float, float]], ...]
    require_dp: bool
    recipients: tuple[str, ...]
    review_by: tuple[str, ...]
    limits: tuple[tuple[str, float], ...] = ()
    # the smallest per-job cap of the DP inputs (None: every input is in exact mode)
    epsilon_cap: float | None = None
    delta_cap: float | None = None
    # what this job spends, set by `jobspec.check_job` from the spec and these caps (None: exact)
    job_epsilon: float | None = None
    job_delta: float | None = None
    precision: int = 3  # the fewest significant digits any input allows for exact numbers

    def to_dict(self) -> dict[str, Any]:
        """The exact shape the release phase reads."""
        return {
            "k": self.k,
            "outputs": sorted(self.outputs),
            "estimators": sorted(self.estimators),
            "allow_row_storing": self.allow_row_storing,
            "max_model_bytes": self.max_model_bytes,
            "never_output": sorted(self.never_output),
            "join_only": sorted(self.join_only),
            "bounds": {col: [lo, hi] for col, (lo, hi) in sorted(self.bounds)},
            "require_dp": self.require_dp,
            "recipients": sorted(self.recipients),
            "review_by": sorted(self.review_by),
            "limits": dict(sorted(self.limits)),
            "dp": None if self.job_epsilon is None else {"epsilon": self.job_epsilon, "delta": self.job_delta},
            "precision": self.precision,
        }


def combine(policies: Mapping[str, Policy], *, owners: Mapping[str, str] | None = None) -> EffectivePolicy:
    """Combine the policies of a job's inputs (keyed by dataset name); the most restrictive rule wins.

    With `owners` (dataset -> owner org), each dataset's owner counts as an allowed recipient of
    that dataset (an empty `recipients` list means "nobody but the owner").
    """
    if not policies:
        raise PolicyError("a job needs at least one input dataset")
    items = sorted(policies.items())

    def meet(sets: Iterable[Iterable[str]]) -> tuple[str, ...]:
        first, *rest = [set(s) for s in sets]
        return tuple(sorted(first.intersection(*rest)))

    bounds: dict[str, tuple[float, float]] = {}
    seen: dict[str, list[str]] = {}
    for dataset, policy in items:
        for col in policy.columns:
            if col.bounds is None:
                continue
            lo, hi = bounds.get(col.name, (-math.inf, math.inf))
            lo, hi = max(lo, col.bounds[0]), min(hi, col.bounds[1])
            seen.setdefault(col.name, []).append(f"{dataset!r} allows [{col.bounds[0]:g}, {col.bounds[1]:g}]")
            if lo >= hi:
                raise PolicyError(
                    f"the bounds of column {col.name!r} do not overlap: " + ", ".join(seen[col.name]),
                    details={"column": col.name},
                )
            bounds[col.name] = (lo, hi)
    owners = owners or {}
    private = [p for _, p in items if p.require_dp]
    return EffectivePolicy(
        k=max(p.k for _, p in items),
        outputs=meet(p.outputs for _, p in items),
        estimators=meet(p.estimators for _, p in items),
        allow_row_storing=all(p.allow_row_storing for _, p in items),
        max_model_bytes=min(p.max_model_bytes for _, p in items),
        never_output=tuple(sorted({c for _, p in items for c in p.columns_with("never_output")})),
        join_only=tuple(sorted({c for _, p in items for c in p.columns_with("join_only")})),
        bounds=tuple(sorted(bounds.items())),
        require_dp=any(p.require_dp for _, p in items),
        recipients=meet(set(p.recipients) | ({owners[d]} if d in owners else set()) for d, p in items),
        review_by=tuple(d for d, p in items if p.review),
        limits=tuple(
            sorted(
                (key, min(v for _, p in items for k, v in p.limits if k == key))
                for key in {k for _, p in items for k, _ in p.limits}
            )
        ),
        epsilon_cap=min(p.job_epsilon for p in private) if private else None,
        delta_cap=min(p.job_delta for p in private) if private else None,
        precision=min(3 if p.precision is None else p.precision for _, p in items),
    )


# ---------------------------------------------------------------------------------------------
# Columns that look like direct identifiers

# (pattern, reason). A pattern matches a run of the column's tokens whose concatenation equals it
# ("first name" matches first_name, FirstName, firstname); a pattern starting with "=" must be the
# whole name.
IDENTIFIER_PATTERNS: tuple[tuple[str, str], ...] = tuple(
    (pattern, reason)
    for reason, patterns in {
        "a person's name": (
            "=name",
            "first name",
            "last name",
            "full name",
            "given name",
            "family name",
            "middle name",
            "maiden name",
            "surname",
            "nickname",
            "user name",
            "login",
            "customer name",
            "client name",
            "patient name",
            "person name",
            "contact name",
        ),
        "an email address": ("email", "email address"),
        "a phone number": ("phone", "telephone", "=tel", "mobile", "cellphone", "=cell", "fax"),
        "a street address": ("address", "street", "=addr", "home addr", "street addr"),
        "a postal code": ("zip", "zip code", "postcode", "postal code"),
        "a national id number": ("ssn", "social security", "national id", "tax id", "nino", "national insurance"),
        "a passport or licence number": (
            "passport",
            "driver license",
            "drivers license",
            "driving licence",
            "license number",
            "licence number",
            "license plate",
            "=vin",
        ),
        "a network or device address": ("ip", "ip address", "ipv4", "ipv6", "mac address", "imei", "device id"),
        "a date of birth": ("dob", "date of birth", "birth date", "birthday", "birthdate"),
        "a bank or card number": (
            "iban",
            "card number",
            "credit card",
            "cc number",
            "account number",
            "bank account",
            "cvv",
        ),
        "a precise location": ("latitude", "longitude", "=lat", "=lon", "=lng", "gps"),
        "a direct id of a person": (
            "=id",
            "customer id",
            "client id",
            "user id",
            "patient id",
            "person id",
            "member id",
            "employee id",
            "medical record number",
            "mrn",
        ),
    }.items()
    for pattern in patterns
)
# A token like these makes the column a derived fact, not the identifier itself (address_count).
_DERIVED = {
    "count",
    "counts",
    "cnt",
    "has",
    "is",
    "verified",
    "valid",
    "missing",
    "present",
    "length",
    "len",
    "changed",
    "type",
    "flag",
}


def _tokens(name: str) -> list[str]:
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return [t for t in re.split(r"[\s_.\-]+", name.lower()) if t]


def looks_like_identifier(column_name: str) -> str | None:
    """Why `column_name` looks like a direct identifier ("a person's name"), or None."""
    tokens = _tokens(column_name)
    if not tokens or _DERIVED & set(tokens):
        return None
    runs = {"".join(tokens[i:j]) for i in range(len(tokens)) for j in range(i + 1, len(tokens) + 1)}
    whole = "".join(tokens)
    hits = [
        (len(pattern), reason)
        for pattern, reason in IDENTIFIER_PATTERNS
        if (whole == pattern[1:] if pattern.startswith("=") else pattern.replace(" ", "") in runs)
    ]
    return max(hits)[1] if hits else None  # the longest pattern: ip_address is not a street address
