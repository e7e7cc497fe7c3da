"""Which column names may leave the clean room (trusted code, release phase).

Column names in the frame are chosen by plugin code, which sees the data, so a name can carry a
value from one row (`leak_<code>_<spend>`) while every released group holds k units. Released names
(aggregate headers, model features and target, the model card, `feature_names_in_`) must therefore
hold only information that is public before the job runs:

- a column of an input's schema, or its joined form `<column>@<dataset>`;
- such a name followed by one or more derivation suffixes, each either a separator (`_`, `__`, `.`,
  `:`, `=`, `-`) and a word of `VOCABULARY`, a published category of the base column (the string
  categories in the schema's summaries, which the owner already made public with the mock data),
  or a short string the analyst wrote in the job spec's step parameters before any data was seen
  (a one-hot `sep`, a bin `suffix`, a category list; at most `MAX_JOB_STRINGS` of them, each at
  most `MAX_JOB_STRING` characters).

So `age`, `region_north`, `signup_date_year`, `income_missing`, `region@retail.customers_other` pass;
`u_4f2a...`, `leak_ab12_1234` and `region_<an unpublished value>` do not. Names are capped at
`MAX_NAME` characters. Aggregate table names come from the job spec, never from plugin output.

What remains is a choice among public names: a plugin can still signal a few bits through which
allowed names it uses (and in what order), never a value copied from a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

MAX_NAME = 128
SEPARATORS = ("__", "_", ".", ":", "=", "-")
VOCABULARY = frozenset(
    {
        "missing",
        "imputed",
        "bin",
        "binned",
        "bucket",
        "other",
        "true",
        "false",
        "True",
        "False",
        "yes",
        "no",
        "year",
        "month",
        "day",
        "weekday",
        "quarter",
        "dayofyear",
        "week",
        "hour",
        "minute",
        "scaled",
        "std",
        "z",
        "norm",
        "log",
        "log1p",
        "sqrt",
        "squared",
        "sq",
        "clipped",
        "rank",
        "code",
        "encoded",
        "count",
        "sum",
        "mean",
        "min",
        "max",
        "x",
    }
)
MAX_JOB_STRINGS = 64
MAX_JOB_STRING = 32


class UnsafeName(Exception):
    """A released name is not derived from public names; the message never quotes the name."""


class NameRule:
    def __init__(self, columns: Mapping[str, Iterable[str]], job_strings: Iterable[str] = ()) -> None:
        """`columns`: every allowed base name -> its published categories."""
        self.categories = {str(name): frozenset(str(c) for c in cats) for name, cats in columns.items()}
        self.plain = frozenset(name for name in self.categories if "@" not in name)
        short = sorted({s for s in job_strings if isinstance(s, str) and 0 < len(s) <= MAX_JOB_STRING})
        self.job_strings = frozenset(short[:MAX_JOB_STRINGS])
        self.roots = lru_cache(maxsize=4096)(self._roots)

    @classmethod
    def from_request(cls, raw: Any) -> NameRule:
        """Build from the release request's `names`: {"schemas": {dataset: {column: [category, ...]}},
        "job_strings": [...]} (validated; malformed input raises ValueError)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("schemas"), dict):
            raise ValueError("names.schemas must be an object")
        columns: dict[str, set[str]] = {}
        for dataset, schema in raw["schemas"].items():
            if not isinstance(schema, dict):
                raise ValueError("each schema is an object of column -> categories")
            for column, cats in schema.items():
                if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
                    raise ValueError("categories must be lists of strings")
                for name in (column, f"{column}@{dataset}"):
                    columns.setdefault(name, set()).update(cats)
        strings = raw.get("job_strings", [])
        if not isinstance(strings, list):
            raise ValueError("names.job_strings must be a list")
        return cls(columns, [s for s in strings if isinstance(s, str)])

    def allowed(self, name: str) -> bool:
        return bool(self.roots(name))

    def _roots(self, name: str) -> frozenset[str]:
        """The input columns `name` can be derived from (empty: not a releasable name)."""
        if len(name) > MAX_NAME:
            return frozenset()
        found: set[str] = set()
        if name in self.categories:
            found.add(name.split("@", 1)[0] if "@" in name and name not in self.plain else name)
        for cut in range(len(name) - 1, 0, -1):
            prefix, rest = name[:cut], name[cut:]
            if self._suffix_ok(prefix, rest):
                found |= self.roots(prefix)
        return frozenset(found)

    def _suffix_ok(self, prefix: str, rest: str) -> bool:
        if rest in self.job_strings:
            return True
        cats = self.categories.get(prefix, frozenset())
        for sep in SEPARATORS:
            if rest.startswith(sep):
                word = rest[len(sep) :]
                if word and (word in VOCABULARY or word in cats or word in self.job_strings):
                    return True
        return False

    def check(self, names: Iterable[str], role: str, forbidden: Iterable[str] = ()) -> None:
        """Refuse a name that is not releasable, or one derived from a `forbidden` column (never_output,
        join_only): a one-hot `email_<x>` is as much the email column as `email` itself."""
        banned = frozenset(forbidden)
        for position, name in enumerate(names, 1):
            roots = self.roots(name) if isinstance(name, str) else frozenset()
            if not roots:
                raise UnsafeName(
                    f"{role} #{position} has a name that is neither an input column nor derived "
                    "from one by a known suffix, a published category or a string of the job spec; "
                    "rename it in the plugin (docs/policy.md, 'Released names')"
                )
            if roots & banned:
                raise UnsafeName(
                    f"{role} #{position} is derived from a column the policy marks never_output or join_only"
                )


def job_strings(steps: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every string in the job spec's step parameters (written before any data was seen)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for step in steps:
        walk(step.get("params", {}))
    return sorted(set(found))
