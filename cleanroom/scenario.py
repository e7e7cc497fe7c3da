"""The motivating scenario's data: a retailer's purchases and a bank's customers.

Generated, but realistic: overlapping customer ids, personal identifiers in the raw files, and a
spend that depends on features from both sides (so the joined model beats either side alone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REGIONS = ["north", "south", "east", "west"]
CATEGORIES = ["grocery", "electronics", "fashion", "home"]
SEGMENTS = ["mass", "affluent", "private"]

# Both policies leave differential privacy on (the default: a lifetime budget of epsilon 3 per dataset,
# at most 1 per job) and declare what is public about each column: bounds for numbers (DP clips to
# them) and the category domains (published, used for mock data and released names).
RETAIL_POLICY = """\
[outputs]
allowed = ["aggregate", "model"]

[privacy]
k = 10
epsilon = 3.0

[release]
recipients = ["acme-analytics"]
review = true

[models]
estimators = ["linear_regression", "ridge", "lasso", "gradient_boosting_regressor"]

[columns.spend]
bounds = [0, 2500]
[columns.visits]
bounds = [0, 40]
[columns.region]
domain = ["north", "south", "east", "west"]
[columns.category]
domain = ["grocery", "electronics", "fashion", "home"]
"""

BANK_POLICY = """\
[outputs]
allowed = ["aggregate", "model"]

[privacy]
k = 10

[release]
recipients = ["acme-analytics"]
review = false

[columns.age]
bounds = [18, 100]
[columns.income]
bounds = [0, 150000]
[columns.tenure_years]
bounds = [0, 40]
[columns.segment]
domain = ["mass", "affluent", "private"]
"""


# Exact mode, for tests that compare against exact releases: the owner opts out of DP explicitly,
# and every release is then held for the owner's review.
def exact_policy(policy: str) -> str:
    """`policy` in exact mode (require_dp = false; review is forced)."""
    return policy.replace("[privacy]\n", "[privacy]\nrequire_dp = false\n", 1)


def make_data(n: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw files as each org holds them (identifiers included); most customers are in both."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"C{100000 + i}" for i in range(int(n * 1.1))])
    retail_ids = rng.choice(ids, size=n, replace=False)
    bank_ids = rng.choice(ids, size=n, replace=False)
    pool = int(n * 1.1)
    age = rng.integers(18, 85, size=pool)
    income = np.round(rng.lognormal(10.6, 0.45, size=pool), 2)
    tenure = rng.integers(0, 30, size=pool)
    segment = np.where(income > 80_000, "private", np.where(income > 50_000, "affluent", "mass"))
    region = rng.choice(REGIONS, size=pool)
    visits = rng.poisson(12, size=pool)
    category = rng.choice(CATEGORIES, size=pool, p=[0.4, 0.2, 0.25, 0.15])
    cat_lift = pd.Series(category).map({"grocery": 0, "electronics": 180, "fashion": 90, "home": 60}).to_numpy()
    spend = (
        (120 + 0.012 * income + 14 * visits + 2.5 * age + 8 * tenure + cat_lift + rng.normal(0, 60, size=pool))
        .clip(0, 5000)
        .round(2)
    )
    index = {cid: i for i, cid in enumerate(ids)}
    r = np.array([index[c] for c in retail_ids])
    b = np.array([index[c] for c in bank_ids])
    days = rng.integers(0, 365, size=pool)
    last = (pd.Timestamp("2026-01-01") + pd.to_timedelta(days, unit="D")).strftime("%Y-%m-%d")
    retail = pd.DataFrame(
        {
            "customer_id": retail_ids,
            "email": [f"{c.lower()}@example.com" for c in retail_ids],
            "spend": spend[r],
            "visits": visits[r],
            "category": category[r],
            "region": region[r],
            "last_purchase": np.asarray(last)[r],
        }
    )
    bank = pd.DataFrame(
        {
            "customer_id": bank_ids,
            "full_name": [f"Customer {c[1:]}" for c in bank_ids],
            "phone": [f"+44 20 7946 {int(c[1:]) % 10000:04d}" for c in bank_ids],
            "age": age[b],
            "income": income[b],
            "tenure_years": tenure[b],
            "segment": segment[b],
        }
    )
    # a few gaps, as real files have
    bank.loc[rng.random(len(bank)) < 0.02, "tenure_years"] = np.nan
    return retail, bank


def write_data(folder: Path, n: int, seed: int = 7) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    retail, bank = make_data(n, seed)
    paths = {
        "retail": folder / "retail_purchases.csv",
        "bank": folder / "bank_customers.csv",
        "retail_policy": folder / "retail_policy.toml",
        "bank_policy": folder / "bank_policy.toml",
    }
    retail.to_csv(paths["retail"], index=False)
    bank.to_csv(paths["bank"], index=False)
    paths["retail_policy"].write_text(RETAIL_POLICY)
    paths["bank_policy"].write_text(BANK_POLICY)
    new = make_data(max(200, n // 50), seed + 1)[1].merge(make_data(max(200, n // 50), seed + 1)[0], on="customer_id")
    paths["new_customers"] = folder / "new_customers.csv"
    new["tenure_years"] = new["tenure_years"].fillna(0)
    new.drop(columns=["spend"]).to_csv(paths["new_customers"], index=False)
    return paths


PLUGINS = ("drop-identifiers", "impute", "clip", "one-hot", "linear-model", "group-aggregate")


# the one-hot columns of the job (bounds [0, 1], declared in the job spec: they are not input columns)
ONE_HOT = [f"category_{c}" for c in CATEGORIES] + [f"segment_{s}" for s in SEGMENTS]


def job_spec(
    plugin_ids: dict[str, str],
    *,
    recipient: str = "acme-analytics",
    retail: str = "retail.purchases",
    bank: str = "bank.customers",
    epsilon: float | None = None,
) -> str:
    """The motivating job: join, drop identifiers, impute a constant, one-hot, ridge on spend, spend by
    region. Every step is a per-row transform (no statistic of the whole frame feeds a released value),
    and the spec declares bounds for the one-hot columns, so it runs with DP (the default) as it is."""
    dp = f"epsilon = {epsilon}\n" if epsilon else ""
    one_hot = ", ".join(f"{name} = [0, 1]" for name in ONE_HOT)
    return f"""\
name = "spend-model"
recipient = "{recipient}"

[[inputs]]
dataset = "{retail}"
[[inputs]]
dataset = "{bank}"

[join]
how = "inner"

[[steps]]
plugin = "{plugin_ids["drop-identifiers"]}"
params = {{ missing_ok = true }}

[[steps]]
plugin = "{plugin_ids["impute"]}"
params = {{ columns = ["tenure_years"], strategy = "constant", fill_value = 0 }}

[[steps]]
plugin = "{plugin_ids["one-hot"]}"
params = {{ columns = ["category", "segment"], keep_original = false }}

[[steps]]
plugin = "{plugin_ids["linear-model"]}"
params = {{ estimator = "ridge", target = "spend", alpha = 1.0 }}

[[steps]]
plugin = "{plugin_ids["group-aggregate"]}"
params = {{ name = "spend_by_region", group_by = ["region"], metrics = [
    {{ agg = "count" }}, {{ agg = "mean", column = "spend" }}] }}

[outputs]
model = true
metrics = true
aggregates = true
holdout_fraction = 0.2
seed = 0
bounds = {{ {one_hot} }}
{dp}"""
