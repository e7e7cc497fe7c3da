"""The spend-model scenario, step by step, with the Python SDK only.

A retailer and a bank each hold half of what predicts how much a customer spends. An analytics firm
trains a model on the two joined datasets without anyone seeing the other side's rows. Every step
below is one SDK call that the CLI also offers (the comment names the command).

Run it against a room (for example the one `make up` started, whose admin token is in the `admin`
profile that `make up` saved):

    python examples/spend_model.py --url http://127.0.0.1:8000 --admin-token crt_...

Each run makes new orgs and datasets (names end in a random tag), so it can run again and again.
Org key pairs are made on this machine under CLEANROOM_HOME (default ~/.cleanroom/keys).
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cleanroom import Client

PLUGINS = ("drop-identifiers", "impute", "one-hot", "linear-model", "group-aggregate")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", required=True, help="the room's API, e.g. http://127.0.0.1:8000")
parser.add_argument("--admin-token", required=True, help="the room's admin token (crt_...)")
parser.add_argument("--customers", type=int, default=20000, help="customers in each owner's file")
parser.add_argument(
    "--plugins",
    type=Path,
    default=Path(__file__).resolve().parent.parent / "plugins",
    help="the folder of built-in plugins (default: the repo's plugins/)",
)
parser.add_argument("--workdir", type=Path, default=None, help="where to write the raw files and results")
parser.add_argument("--tag", default=None, help="suffix for org and dataset names (default: random)")
parser.add_argument("--ca-file", default=None, help="CA bundle when the room serves HTTPS")
args = parser.parse_args()
tag = args.tag or secrets.token_hex(2)
work = args.workdir or Path(tempfile.mkdtemp(prefix="cleanroom-example-"))
work.mkdir(parents=True, exist_ok=True)

# %% 1. The room ------------------------------------------------------------------------------------
# The runner made the room's key pair on its first start and published the public half. Owners
# encrypt their data to it; compare the fingerprint with the one your operator announced.
admin = Client(args.url, args.admin_token, ca_file=args.ca_file)
room = admin.room()  # cleanroom room info
if not room["ready"]:
    raise SystemExit("the room has no key yet: is the runner up?")
print(f"room {args.url}: key fingerprint {room['keys']['fingerprint']}")

# %% 2. Three orgs ----------------------------------------------------------------------------------
# The admin creates each org and hands its token over (once). Each org then makes its own key pair
# on its own machine on first use (`keys()`); only the public halves are registered with the room.
#   cleanroom org create retailer --role owner --save-profile retailer


def new_org(name: str, role: str) -> Client:
    created = admin.create_org(name, [role])
    client = Client(args.url, created["token"], ca_file=args.ca_file)
    client.keys()
    return client


retailer = new_org(f"retailer-{tag}", "owner")
bank = new_org(f"bank-{tag}", "owner")
analyst = new_org(f"analytics-{tag}", "analyst")
analyst_name = analyst.whoami()["name"]
print("orgs:", ", ".join(c.whoami()["name"] for c in (retailer, bank, analyst)))

# %% 3. The raw files, as each owner holds them -------------------------------------------------------
# Most customers are in both files. Spend depends on columns from both sides (visits and category
# at the retailer, income and age at the bank), so only the joined data predicts it well. The
# files hold direct identifiers (email, full_name, phone) that must never leave the owners.
rng = np.random.default_rng(7)
n = args.customers
people = pd.DataFrame({"customer_id": [f"C{100000 + i}" for i in range(int(n * 1.1))]})
people["age"] = rng.integers(18, 85, len(people))
people["income"] = rng.lognormal(10.6, 0.45, len(people)).round(2)
people["segment"] = np.where(people["income"] > 60_000, "affluent", "mass")
people["tenure_years"] = rng.integers(0, 30, len(people)).astype(float)
people["region"] = rng.choice(["north", "south", "east", "west"], len(people))
people["visits"] = rng.poisson(12, len(people))
people["category"] = rng.choice(["grocery", "electronics", "fashion", "home"], len(people))
lift = people["category"].map({"grocery": 0, "electronics": 180, "fashion": 90, "home": 60})
people["spend"] = (
    (
        120
        + 0.012 * people["income"]
        + 14 * people["visits"]
        + 2.5 * people["age"]
        + lift
        + rng.normal(0, 60, len(people))
    )
    .clip(0, 5000)
    .round(2)
)
people.loc[rng.random(len(people)) < 0.02, "tenure_years"] = np.nan  # real files have gaps

retail_rows = people.sample(n, random_state=1)
retail_rows = retail_rows.assign(email=retail_rows["customer_id"].str.lower() + "@example.com")
retail_rows[["customer_id", "email", "spend", "visits", "category", "region"]].to_csv(
    work / "retail_purchases.csv", index=False
)
bank_rows = people.sample(n, random_state=2)
bank_rows = bank_rows.assign(full_name="Customer " + bank_rows["customer_id"].str[1:], phone="+44 20 7946 0000")
bank_rows[["customer_id", "full_name", "phone", "age", "income", "tenure_years", "segment"]].to_csv(
    work / "bank_customers.csv", index=False
)

# %% 4. Policies: each owner's word on what may leave the room (docs/policy.md) -------------------------
# Differential privacy is the default: each dataset has a lifetime budget (epsilon 3), each job spends
# at most epsilon 1, and every released number is noisy. The owners declare what is public about their
# columns: bounds of numbers (DP clips to them) and the categories of text columns (the schema and the
# mock rows show these and nothing computed from the rows). The retailer also reviews every release.
retail_policy = f"""
[outputs]
allowed = ["aggregate", "model"]
[privacy]
k = 10
[release]
recipients = ["{analyst_name}"]
review = true
[columns.spend]
bounds = [0, 2500]
[columns.visits]
bounds = [0, 40]
[columns.region]
domain = ["north", "south", "east", "west"]
[columns.category]
domain = ["grocery", "electronics", "fashion", "home"]
"""
bank_policy = f"""
[privacy]
k = 10
[release]
recipients = ["{analyst_name}"]
[columns.age]
bounds = [18, 100]
[columns.income]
bounds = [0, 150000]
[columns.tenure_years]
bounds = [0, 40]
[columns.segment]
domain = ["mass", "affluent"]
"""

# %% 5. Upload: everything sensitive happens on the owner's machine --------------------------------------
# `upload_dataset` infers the schema, drops identifier-looking columns (email, full_name, phone),
# replaces customer_id with `_pid` = HMAC(join secret, id), makes a synthetic mock sample, and
# streams the rows encrypted to the room key. Only ciphertext and metadata reach the room.
# The join secret is shared by the owners only, out of band: here both owners live in one script.
#   cleanroom join-secret new room-join.key
#   cleanroom dataset upload purchases.csv --name ... --policy ... --id-column customer_id --join-secret ...
join_secret = secrets.token_bytes(32)
retail_ds, bank_ds = f"retail.purchases-{tag}", f"bank.customers-{tag}"
for owner, path, name, policy in (
    (retailer, work / "retail_purchases.csv", retail_ds, retail_policy),
    (bank, work / "bank_customers.csv", bank_ds, bank_policy),
):
    ds = owner.upload_dataset(path, name=name, policy=policy, id_column="customer_id", join_secret=join_secret)
    print(f"uploaded {ds['name']}: {ds['row_count']} rows, columns {ds['columns']}")

# %% 6. The analyst looks at schemas and mock rows, never at real rows -----------------------------------
#   cleanroom dataset show retail.purchases
shown = analyst.get_dataset(retail_ds)
print(f"{retail_ds} dropped before upload: {shown['dropped']}; a mock row: {shown['mock'][0]}")

# %% 7. The analyst submits plugins; each gets an automatic review report -----------------------------
# A plugin's id is the sha256 of its canonical bundle: the exact bytes the owners will approve.
#   cleanroom plugin submit plugins/impute
ids = {}
for name in PLUGINS:
    submitted = analyst.submit_plugin(args.plugins / name)
    ids[name] = submitted["id"]
    print(f"plugin {name}: {submitted['id'][:16]}, {len(submitted['review']['findings'])} review findings")

# %% 8. Each owner reads the code and signs an approval for its own dataset ---------------------------
# The approval is signed on the owner's machine and binds (plugin id, dataset ciphertext, policy
# version). A new policy version or a new plugin version needs a new approval.
#   cleanroom plugin show <id>;  cleanroom plugin approve <id> --dataset retail.purchases
for plugin_id in ids.values():
    retailer.decide_plugin(plugin_id, retail_ds)
    bank.decide_plugin(plugin_id, bank_ds)

# %% 9. The job: join on _pid, clean, encode, fit ridge on spend, aggregate spend by region ----------
#   cleanroom job submit spend-model.toml;  cleanroom job wait <job>
spec = f"""
name = "spend-model"
recipient = "{analyst_name}"
time_budget = 120  # seconds from the start: the analyst learns the outcome then, whatever happened inside
[[inputs]]
dataset = "{retail_ds}"
[[inputs]]
dataset = "{bank_ds}"

[[steps]]
plugin = "{ids["drop-identifiers"]}"
params = {{ missing_ok = true }}
[[steps]]
plugin = "{ids["impute"]}"
params = {{ columns = ["tenure_years"], strategy = "constant", fill_value = 0 }}   # per row: fine under DP
[[steps]]
plugin = "{ids["one-hot"]}"
params = {{ columns = ["category", "segment"] }}
[[steps]]
plugin = "{ids["linear-model"]}"
params = {{ estimator = "ridge", target = "spend", alpha = 1.0 }}
[[steps]]
plugin = "{ids["group-aggregate"]}"
params = {{ name = "spend_by_region", group_by = ["region"], metrics = [{{ agg = "count" }},
                                                                        {{ agg = "mean", column = "spend" }}] }}

[outputs]
model = true
metrics = true
aggregates = true
[outputs.bounds]   # the one-hot columns are not input columns: the job declares their bounds
category_grocery = [0, 1]
category_electronics = [0, 1]
category_fashion = [0, 1]
category_home = [0, 1]
segment_mass = [0, 1]
segment_affluent = [0, 1]
"""
(work / "spend-model.toml").write_text(spec)
#   cleanroom job cost spend-model.toml   (the dry run: the privacy charge and the noise, nothing runs)
cost = analyst.job_cost(spec)
print(
    f"the job will spend epsilon {cost['plan']['epsilon']:g}, delta {cost['plan']['delta']:g} of each dataset's "
    "budget, at submission, for good"
)
job = analyst.submit_job(spec)  # refused right here, with the reason, if a policy or approval is missing
# The retailer, an input owner, sees the phases, the end and (on failure) the error class and log; the
# analyst sees only `running` until the job's outcome time, then `released` or `nothing_released`.
final = retailer.wait_job(
    job["id"], timeout=900, on_update=lambda j: print(f"job {j['id']}: {j['status']} {j.get('phase') or ''}".rstrip())
)
if final["status"] != "succeeded":
    raise SystemExit(f"the job ended {final['status']} ({final.get('error_class')}): cleanroom job logs {job['id']}")

# %% 10. The retailer reviews the release and approves it ----------------------------------------------
#   cleanroom release show <job>;  cleanroom release approve <job>
release = retailer.get_release(job["id"])
for check in release["manifest"]["checks"]:
    print(f"release check {check['name']}: {'passed' if check['passed'] else 'FAILED'}")
retailer.approve_release(job["id"])

# %% 11. The analyst downloads and decrypts the result; the receipt is verified on the way ------------
#   cleanroom result get <job> -o out/;  cleanroom receipt verify out/receipt.json
print("the analyst waits for the job's outcome time (its start + time_budget) ...")
if analyst.wait_job(job["id"], timeout=900)["status"] != "released":
    raise SystemExit("nothing was released")
out = work / "out"
analyst.get_result(job["id"], out)
metrics = json.loads((out / "metrics.json").read_text())["metrics"]
print("holdout metrics (noisy: differential privacy) of the model trained on data that neither side saw whole:")
for key, value in metrics.items():
    print(f"  {key} = {value}")
print("spend by region (noisy counts and means):")
print((out / "aggregates" / "spend_by_region.csv").read_text())

# %% 12. Anyone in the room can check the audit log's hash chain ---------------------------------------
#   cleanroom audit verify
audit = analyst.audit_verify()
print(f"audit log: {audit['count']} events, chain intact = {audit['ok']}")
print(f"files in {work}")
