"""What differential privacy costs in accuracy on the motivating scenario (a script, not a test).

    .venv/bin/python benchmarks/privacy.py                      # 50k joined units, epsilon 0.5, 1, 4
    .venv/bin/python benchmarks/privacy.py --units 1000000 --repeat 3

The scenario's data (`cleanroom.scenario.make_data`) goes through the job's steps in pandas (join on
the id, drop identifiers, impute tenure with 0, one-hot category and segment), then through the
release phase's own code (`cleanroom.sandbox.release.phase.run`, the trusted phase the runner starts in a
container) with the job's (epsilon, delta) and the scenario policies' declared bounds. Reported per
epsilon, as the median over --repeat runs (noise is fresh each run):

- aggregates: the relative error of each cell of spend-by-region (count and mean spend) against the
  exact table;
- model: the relative error of the DP ridge coefficients of the numeric features (visits, age,
  income, tenure) against an exact least-squares fit on the same rows (||b_dp - b|| / ||b||, each
  coefficient times its feature's declared range so that they are comparable; the one-hot sets are
  collinear with the intercept, so their coefficients are not identified), R^2 of both models on
  all rows, and the released (noisy) holdout R^2.

Released cells are also rounded by the release phase (3 significant digits), which bounds how small
the aggregate errors can get.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pandas as pd
import skops.io as sio

from cleanroom import scenario
from cleanroom.policy import combine, parse_policy
from cleanroom.sandbox import wire
from cleanroom.sandbox.release import phase as release


def joined_frame(units: int, seed: int = 7) -> pd.DataFrame:
    retail, bank = scenario.make_data(int(units / 0.91) + 1, seed)
    frame = retail.merge(bank, on="customer_id").head(units)
    frame = frame.drop(columns=["email", "full_name", "phone"]).rename(columns={"customer_id": "_pid"})
    frame["_pid"] = pd.factorize(frame["_pid"])[0].astype(np.int64)
    frame["tenure_years"] = frame["tenure_years"].fillna(0)
    for column in ("category", "segment"):
        for value in sorted(frame[column].unique()):
            frame[f"{column}_{value}"] = (frame[column] == value).astype("int8")
        frame = frame.drop(columns=[column])
    return frame


def request(frame: pd.DataFrame, epsilon: float | None, delta: float) -> dict:
    effective = combine({"retail": parse_policy(scenario.RETAIL_POLICY), "bank": parse_policy(scenario.BANK_POLICY)})
    policy = effective.to_dict()
    policy["bounds"].update({name: [0, 1] for name in scenario.ONE_HOT})
    features = [c for c in frame.columns if c not in ("_pid", "spend", "region", "last_purchase")]
    return {
        "job_id": "bench",
        "policy": policy,
        "outputs": {"model": True, "metrics": True, "aggregates": True, "holdout_fraction": 0.2, "seed": 0},
        "model_spec": {
            "estimator": "ridge",
            "params": {"alpha": 1.0},
            "target": "spend",
            "features": features,
            "task": "regression",
        },
        "analysis_specs": [
            {
                "name": "spend_by_region",
                "group_by": ["region"],
                "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}],
            }
        ],
        "table_names": ["spend_by_region"],
        "dp": {"epsilon": epsilon, "delta": delta if epsilon else None},
        "names": {
            "schemas": {"joined": {c: list(scenario.REGIONS) for c in frame.columns}},
            "job_strings": ["spend_by_region"],
        },
    }


def exact_reference(frame: pd.DataFrame, features: list[str], bounds: dict) -> dict:
    table = frame.groupby("region").agg(count=("_pid", "size"), mean_spend=("spend", "mean"))
    X = frame[features].to_numpy(dtype="float64")
    y = frame["spend"].to_numpy(dtype="float64")
    A = np.column_stack([np.ones(len(X)), X])
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    return {
        "table": table,
        "coef": coef[1:],
        "intercept": coef[0],
        "r2": 1 - np.sum((y - A @ coef) ** 2) / np.sum((y - y.mean()) ** 2),
        "width": np.array([bounds[f][1] - bounds[f][0] for f in features]),
    }


def one_run(frame: pd.DataFrame, req: dict, ref: dict, features: list[str]) -> dict:
    started = time.monotonic()
    meta, files = release.run(req, {release.FRAME: wire.frame_to_bytes(frame)})
    if not meta["ok"]:
        raise SystemExit(f"the release failed: {meta['error']}")
    table = pd.read_csv(pd.io.common.BytesIO(files["artifacts/aggregates/spend_by_region.csv"])).set_index("region")
    joined = ref["table"].merge(table, left_index=True, right_index=True, suffixes=("", "_dp"), how="left")
    count_err = (joined["count_dp"] - joined["count"]).abs() / joined["count"]
    mean_err = (joined["mean_spend_dp"] - joined["mean_spend"]).abs() / joined["mean_spend"]
    blob = files["artifacts/model.skops"]
    model = sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    # the numeric features only: the one-hot sets are collinear with the intercept, so their coefficients
    # are not identified (any shift between a set and the intercept fits equally well)
    keep = np.array([not f.startswith(("category_", "segment_")) for f in features])
    scaled = (model.coef_ - ref["coef"])[keep] * ref["width"][keep]  # per unit of each declared range
    coef_err = float(np.linalg.norm(scaled) / np.linalg.norm((ref["coef"] * ref["width"])[keep]))
    X, y = frame[features].to_numpy(dtype="float64"), frame["spend"].to_numpy(dtype="float64")
    pred = X @ model.coef_ + model.intercept_
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    report = json.loads(files["artifacts/metrics.json"])
    return {
        "count_err": float(count_err.max()),
        "mean_err": float(mean_err.max()),
        "coef_err": coef_err,
        "r2": float(r2),
        "released_r2": report["metrics"].get("r2"),
        "seconds": time.monotonic() - started,
        "spent": meta["epsilon_spent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, nargs="+", default=[50_000])
    parser.add_argument("--epsilon", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    parser.add_argument("--delta", type=float, default=1e-7)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'units':>9} {'eps':>5} | {'count err':>9} {'mean err':>9} | {'coef err':>8} {'R2 dp':>6} "
        f"{'R2 exact':>8} {'R2 released':>11} | {'eps spent':>9} {'s/run':>6}"
    )
    for units in args.units:
        frame = joined_frame(units)
        base = request(frame, None, args.delta)
        features = base["model_spec"]["features"]
        ref = exact_reference(frame, features, base["policy"]["bounds"])
        for epsilon in args.epsilon:
            runs = [one_run(frame, request(frame, epsilon, args.delta), ref, features) for _ in range(args.repeat)]

            def med(key: str, runs: list[dict] = runs) -> float:
                values = [r[key] for r in runs if r[key] is not None]
                return statistics.median(values) if values else float("nan")

            print(
                f"{units:>9} {epsilon:>5g} | {med('count_err'):>9.2%} {med('mean_err'):>9.2%} | "
                f"{med('coef_err'):>8.2%} {med('r2'):>6.3f} {ref['r2']:>8.3f} {med('released_r2'):>11.3f} | "
                f"{med('spent'):>9.3f} {med('seconds'):>6.2f}"
            )
    print(
        "\ncount err / mean err: the worst cell of spend-by-region (4 regions), relative to the exact cell"
        " (cells are rounded to 3 significant digits);"
        "\ncoef err: ||b_dp - b|| / ||b|| over the numeric features, each times its declared range;"
        "\nR2 dp / exact: both models on every joined row; R2 released: the noisy holdout R2 in metrics.json."
    )
    sample_aggregate_rows(args.units, args.epsilon, args.repeat)


def sample_aggregate_rows(units_list: list[int], epsilons: list[float], repeat: int, m: int = 200) -> None:
    """The sample-and-aggregate row: the analyst's own statistic (median spend per block, any code would
    do), m blocks, clipped mean + Laplace (`cleanroom.runner.blocks`; more in benchmarks/sample_aggregate.py)."""
    from cleanroom.runner import blocks

    output = blocks.Output("median_spend", 0.0, 2500.0, 0.0)
    print(f"\nsample-and-aggregate: median spend per block, m = {m}, range [0, 2500], clipped mean + Laplace")
    print(f"{'units':>9} {'eps':>5} | {'exact':>8} {'med |err|':>9} {'rel err':>7}")
    for units in units_list:
        frame = joined_frame(units)
        salt = bytes(32)  # a benchmark: production draws a secret salt per job
        index = np.array([blocks.block_of(salt, str(u), m) for u in frame["_pid"]])
        answers = [blocks.parse_block([float(frame["spend"][index == j].median())], [output]) for j in range(m)]
        exact = float(frame["spend"].median())
        for epsilon in epsilons:
            err = statistics.median(
                abs(blocks.aggregate(answers, [output], epsilon)[0]["value"] - exact) for _ in range(repeat)
            )
            print(f"{units:>9} {epsilon:>5g} | {exact:>8.1f} {err:>9.1f} {err / exact:>7.2%}")


if __name__ == "__main__":
    main()
