"""What sample-and-aggregate costs in accuracy (a script, not a test).

    .venv/bin/python benchmarks/sample_aggregate.py                    # 50k units, eps 0.5 1 4 (~7 min, 2 cores)
    .venv/bin/python benchmarks/sample_aggregate.py --blocks 20 100 --draws 500

The scenario's joined data (`cleanroom.scenario.make_data`, 50 000 units) is cut into m blocks with
the room's own assignment (`cleanroom.runner.blocks.block_of`, HMAC of the unit's key with a fresh
salt); each block's statistic runs here in pandas (on the runner it is the analyst's plugin, one
container per block); the block answers go through the room's parsing, clipping and OpenDP aggregate
(`blocks.parse_block`, `blocks.aggregate`). Two statistics an analyst would bring:

- median spend (the block-quantile plugin; declared range [0, 2500]) against the exact median;
- the holdout R^2 of a gradient-boosting model of spend (declared range [0, 1]) against the same
  model fitted on all units (80/20 split by unit in both cases).

Reported per (statistic, aggregate, m, epsilon): the exact value, the mean of the m clipped block
answers (what blocking alone costs), the noise scale and the median absolute error of the released
value over --draws releases (noise is fresh each draw; the block answers are computed once per m).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from cleanroom import scenario
from cleanroom.runner import blocks

FEATURES = ["visits", "age", "income", "tenure_years"]


def joined(units: int, seed: int = 7) -> pd.DataFrame:
    retail, bank = scenario.make_data(int(units / 0.91) + 1, seed)
    frame = retail.merge(bank, on="customer_id").head(units)
    frame["tenure_years"] = frame["tenure_years"].fillna(0)
    return frame


def median_spend(df: pd.DataFrame) -> float:
    return float(df["spend"].median())


def boosted_r2(df: pd.DataFrame) -> float:
    holdout = np.random.default_rng(0).random(len(df)) < 0.2
    train, test = df[~holdout], df[holdout]
    if len(train) < 20 or len(test) < 5:
        return float("nan")  # the room's default follows
    model = HistGradientBoostingRegressor(max_iter=100, random_state=0).fit(train[FEATURES], train["spend"])
    return float(model.score(test[FEATURES], test["spend"]))


STATISTICS: dict[str, tuple[Callable[[pd.DataFrame], float], blocks.Output]] = {
    "median spend": (median_spend, blocks.Output("median_spend", 0.0, 2500.0, 0.0)),
    "GBM holdout R2": (boosted_r2, blocks.Output("r2", 0.0, 1.0, 0.0)),
}


def block_answers(
    frame: pd.DataFrame, fn: Callable[[pd.DataFrame], float], output: blocks.Output, m: int
) -> list[list[float]]:
    salt = secrets.token_bytes(blocks.SALT_BYTES)
    index = np.array([blocks.block_of(salt, str(u), m) for u in frame["customer_id"]])
    return [blocks.parse_block([fn(frame[index == j])], [output]) for j in range(m)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=50_000)
    parser.add_argument("--blocks", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--epsilon", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    frame = joined(args.units)
    print(f"{args.units} units; median absolute error over {args.draws} releases\n")
    print(
        f"{'statistic':>15} {'agg':>6} {'m':>4} {'eps':>4} | {'exact':>8} {'blocks':>8} {'scale':>8} "
        f"{'med |err|':>9} {'rel err':>7} | {'s/m':>5}"
    )
    for name, (fn, output) in STATISTICS.items():
        exact = fn(frame)
        for m in args.blocks:
            started = time.monotonic()
            answers = block_answers(frame, fn, output, m)
            seconds = time.monotonic() - started
            pre_noise = statistics.fmean(a[0] for a in answers)
            for how in ("mean", "median"):
                for epsilon in args.epsilon:
                    released = [blocks.aggregate(answers, [output], epsilon, how)[0] for _ in range(args.draws)]
                    err = statistics.median(abs(r["value"] - exact) for r in released)
                    print(
                        f"{name:>15} {how:>6} {m:>4} {epsilon:>4g} | {exact:>8.3f} {pre_noise:>8.3f} "
                        f"{released[0]['noise_scale']:>8.3f} {err:>9.3f} {err / abs(exact):>7.1%} | {seconds:>5.1f}"
                    )
    print(
        "\nblocks: the mean of the m clipped block answers before noise (what blocking alone costs);"
        "\nscale: Laplace scale (hi - lo) / (m eps) for the mean; the exponential mechanism's scale for the median."
    )


if __name__ == "__main__":
    main()
