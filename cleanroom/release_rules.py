"""The release checks that `job submit` decides from the spec alone, with their data-free reasons.

The release phase (`cleanroom.sandbox.release`) checks the specs the approved plugins return. Some of
its checks depend only on things fixed before any data is touched: the job spec's step parameters, the
plugins' manifests (their declared parameters and defaults), the inputs' public schemas and the
policies. Those are decided here, when the analyst submits the job, so a job that must fail is refused
before it spends budget or owners' time, with the reason (which quotes only what the analyst wrote and
the public schemas and policies). The release phase keeps every check: a plugin may return another
spec than its parameters say, and then the run fails as before.

The room reads these parameters as the plugin's spec (the built-in plugins pass them through unchanged),
for a step whose plugin declares them in its manifest:
- analysis steps: `group_by` (columns) and `metrics` (`{agg, column}` tables);
- model steps: `estimator`, `target`, `features` (empty: every numeric column) and `min_samples_leaf`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cleanroom.errors import PolicyError

__all__ = ["check_spec", "name_rule"]


def _published(column: Mapping[str, Any], rule: Mapping[str, Any]) -> list[str]:
    """A column's public categories, as the runner gives them to the release phase
    (`cleanroom.runner.context.JobContext.released_names`)."""
    summary = (column.get("stats") or {}).get("categories") or {}
    return sorted({str(v) for v in summary} | {str(v) for v in rule.get("domain") or []})


def name_rule(spec: Any, inputs: Mapping[str, Mapping[str, Any]]) -> Any:
    """The release phase's released-name rule for this job: `inputs[name] = {"schema": schema dict,
    "policy": policy to_dict()}`."""
    from cleanroom.sandbox.names import NameRule, job_strings

    schemas = {}
    for name, ds in inputs.items():
        rules = (ds.get("policy") or {}).get("columns") or {}
        schemas[name] = {
            str(c["name"]): _published(c, rules.get(c["name"]) or {})
            for c in (ds.get("schema") or {}).get("columns", [])
        }
    steps = [{"params": s.params} for s in spec.steps]
    return NameRule.from_request({"schemas": schemas, "job_strings": job_strings(steps)})


def _refuse(check: str, message: str, step: int | None = None, hint: str | None = None) -> PolicyError:
    details: dict[str, Any] = {"check": check}
    if step is not None:
        details["step"] = step
    return PolicyError(f"release check {check}: {message}", hint=hint, details=details)


def _declared(manifest: Mapping[str, Any], params: Mapping[str, Any], key: str) -> Any:
    """The step's value of `key` (or the manifest's default) if the plugin declares that parameter."""
    declared = (manifest.get("params") or {}).get(key)
    if not isinstance(declared, dict):
        return None
    return params.get(key, declared.get("default"))


def check_spec(
    spec: Any, plugins: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, Mapping[str, Any]], effective: Any
) -> None:
    """Raise `PolicyError` (with `details.check`, the release check's name) for the first release check
    the spec fails before any data is read; `effective` is the job's combined policy."""
    from cleanroom.sandbox.names import UnsafeName
    from cleanroom.sandbox.release import aggregates, dp_plan, models

    rule = name_rule(spec, inputs)
    forbidden = set(effective.never_output) | set(effective.join_only)
    dp = effective.job_epsilon is not None
    bounds = dict(effective.bounds)
    mode = "with differential privacy" if dp else "in exact mode"

    def names(columns: list[str], role: str, i: int, label: str) -> None:
        for column in columns:
            try:
                rule.check([column], role, forbidden)
            except UnsafeName as exc:
                typo = "derived from a column the policy" not in str(exc)
                raise _refuse(
                    "names",
                    f"{label}: {role} {column!r} is "
                    + (
                        "neither an input column nor derived from one by a known suffix, a published "
                        "category or a string of the job spec"
                        if typo
                        else "derived from a column a policy marks never_output or join_only"
                    ),
                    i,
                    hint="check the spelling against `cleanroom dataset show`"
                    if typo
                    else "leave that column out: it never leaves the room",
                ) from None

    group_specs = []
    for i, step in enumerate(spec.steps):
        plugin = plugins[step.plugin]
        manifest, kind = plugin.get("manifest") or {}, plugin.get("kind")
        label = f"step {i} ({plugin.get('name')!r})"
        if kind == "analysis":
            group_by = _declared(manifest, step.params, "group_by")
            metrics = _declared(manifest, step.params, "metrics")
            if isinstance(group_by, list) and all(isinstance(c, str) for c in group_by):
                names(group_by, "group-by column", i, label)
                table = step.params.get("name") if isinstance(step.params.get("name"), str) else f"step{i + 1}"
                group_specs.append(aggregates.AggregateSpec(table, tuple(group_by), ()))
            for metric in metrics if isinstance(metrics, list) else []:
                if not isinstance(metric, dict):
                    continue
                agg, column = metric.get("agg"), metric.get("column")
                if isinstance(column, str):
                    names([column], "metric column", i, label)
                if dp and isinstance(agg, str) and agg not in aggregates.DP_AGGS:
                    raise _refuse(
                        "aggregate:spec",
                        f"{label}: {agg} is not available with differential "
                        f"privacy (only {', '.join(aggregates.DP_AGGS)})",
                        i,
                    )
                if dp and isinstance(column, str) and column not in bounds:
                    raise _refuse(
                        "aggregate:spec",
                        f"{label}: a DP {agg} of {column!r} needs declared bounds for that column",
                        i,
                        hint="the owners declare them in the policy "
                        "([columns.<name>] bounds) or the job spec ([outputs.bounds])",
                    )
        elif kind == "model":
            estimator = _declared(manifest, step.params, "estimator")
            if isinstance(estimator, str):
                if estimator in models.ESTIMATORS and estimator not in effective.estimators:
                    raise _refuse(
                        "model:estimator",
                        f"{label}: estimator {estimator!r} is not allowed by the "
                        f"inputs' policies (allowed: {', '.join(sorted(effective.estimators)) or 'none'})",
                        i,
                    )
                if estimator in models.DP_ONLY and not dp:
                    raise _refuse(
                        "model:estimator",
                        f"{label}: {estimator!r} is fitted only with differential "
                        "privacy, and this job's inputs are in exact mode",
                        i,
                    )
                if estimator in models.ROW_STORING and not effective.allow_row_storing and not dp:
                    raise _refuse(
                        "model:estimator",
                        f"{label}: {estimator!r} stores training rows; the policies do not allow it",
                        i,
                    )
                leaf = _declared(manifest, step.params, "min_samples_leaf")
                if (
                    not dp
                    and estimator in models.TREE_FAMILY
                    and isinstance(leaf, int)
                    and not isinstance(leaf, bool)
                    and leaf < effective.k
                ):
                    raise _refuse(
                        "model:min_samples_leaf",
                        f"{label}: min_samples_leaf = {leaf} is below the policies' k = {effective.k}",
                        i,
                        hint=f"set min_samples_leaf >= {effective.k}",
                    )
            target = _declared(manifest, step.params, "target")
            features = _declared(manifest, step.params, "features")
            columns = [c for c in features if isinstance(c, str)] if isinstance(features, list) else []
            if isinstance(target, str):
                names([target], "target", i, label)
            names(columns, "feature", i, label)
            if dp and estimator in dp_plan.DP_ESTIMATORS:
                unbounded = [c for c in columns + ([target] if isinstance(target, str) else []) if c not in bounds]
                if unbounded:
                    raise _refuse(
                        "model:bounds",
                        f"{label}: a model {mode} needs declared bounds for every "
                        f"feature and the target: none for {', '.join(map(repr, unbounded[:10]))}",
                        i,
                        hint="the owners declare them in the policy ([columns.<name>] bounds) or the "
                        "job spec ([outputs.bounds])",
                    )
    if not dp and len(group_specs) > 1:
        try:
            aggregates.check_nesting(group_specs, rule.roots)
        except aggregates.AggregateError as exc:
            raise _refuse(
                "aggregate:nesting",
                f"{exc}",
                hint="without DP, two tables may not group by nested "
                "columns (one table's group-by a subset of the other's); keep one of them, group "
                "both by the same columns, or run the job with differential privacy",
            ) from None
