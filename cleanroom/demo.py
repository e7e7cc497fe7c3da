"""`cleanroom demo`: the motivating scenario, played against a running room, told step by step.

A retailer and a bank (owners) and an analytics firm (analyst) predict customer spend from the
joined data. Idempotent: orgs and their profiles are made once; each run uploads fresh datasets
(datasets are immutable) and runs a new job.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from cleanroom import scenario
from cleanroom.client import Client, verify_receipt
from cleanroom.errors import Conflict
from cleanroom.profile import Profile, home

console = Console()
ORGS = {"retailer": ["owner"], "bank": ["owner"], "acme-analytics": ["analyst"]}
DEMO_TIME_BUDGET = 120  # seconds from the job's start until its analyst learns the outcome


def plugins_dir() -> Path:
    configured = os.environ.get("CLEANROOM_PLUGINS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "plugins"


def step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan]{n}.[/] {text}")


def org_client(admin: Client, name: str, roles: list[str]) -> Client:
    """A client for the demo org `name`, creating the org and its profile on the first run."""
    profile = Profile.load(f"demo-{name}")
    if profile.token and profile.url == admin.url:
        client = Client(profile.url, profile.token, ca_file=profile.ca_file, profile=profile)
        try:
            client.whoami()
            return client
        except Exception:  # noqa: BLE001 - a stale profile from another room: make a new org below
            pass
    org_name, n = name, 1
    while True:
        try:
            created = admin.create_org(org_name, roles)
            break
        except Conflict:
            n += 1
            org_name = f"{name}-{n}"
    profile.url, profile.token = admin.url, created["token"]
    profile.save()
    console.print(f"   created org [bold]{org_name}[/] ({', '.join(roles)}); profile demo-{name}")
    return Client(admin.url, created["token"], profile=profile)


def run_demo(*, admin_profile: str = "admin", customers: int = 50_000, workdir: str | None = None) -> dict[str, Any]:
    started = time.monotonic()
    admin = Client.from_profile(admin_profile)
    room = admin.room()
    if not room.get("ready"):
        raise SystemExit("the room has no key yet: is the runner up? (make up)")
    run = time.strftime("%Y%m%d%H%M%S")
    work = Path(workdir) if workdir else home() / "demo" / run
    step(1, f"The room at {admin.url}, key fingerprint {room['keys']['fingerprint']}")

    step(2, "Three orgs: a retailer and a bank own data, an analytics firm wants a spend model")
    clients = {name: org_client(admin, name, roles) for name, roles in ORGS.items()}
    retailer, bank, analyst = clients["retailer"], clients["bank"], clients["acme-analytics"]
    for c in clients.values():
        c.keys()  # each org's key pair is made on its own machine; only public halves are sent
    analyst_name = analyst.whoami()["name"]

    step(3, f"Raw files with personal identifiers ({customers:,} customers each, overlapping ids) in {work}")
    files = scenario.write_data(work, customers)
    from cleanroom.prepare.ingest import new_join_secret, save_join_secret

    secret = new_join_secret()
    save_join_secret(work / "room-join.key", secret)
    console.print("   the two owners share a join secret; the room never sees it or a raw id")

    step(4, "Each owner pseudonymises, drops identifiers, encrypts to the room key and uploads")
    names = {"retail": f"retail.purchases.{run}", "bank": f"bank.customers.{run}"}
    policies = {
        "retail": scenario.RETAIL_POLICY.replace("acme-analytics", analyst_name),
        "bank": scenario.BANK_POLICY.replace("acme-analytics", analyst_name),
    }
    for key, client in (("retail", retailer), ("bank", bank)):
        t = time.monotonic()
        ds = client.upload_dataset(
            files[key], name=names[key], policy=policies[key], id_column="customer_id", join_secret=secret
        )
        console.print(
            f"   {ds['name']}: {ds['row_count']:,} rows, {ds['size'] / 2**20:.1f} MiB ciphertext, "
            f"columns {', '.join(ds['columns'])} ({time.monotonic() - t:.1f} s)"
        )

    step(5, "The analyst submits the built-in plugins; each gets an automatic review report")
    ids = {}
    for name in scenario.PLUGINS:
        p = analyst.submit_plugin(plugins_dir() / name)
        ids[name] = p["id"]
        console.print(f"   {name}: {p['id'][:16]}  review findings: {len(p['review'].get('findings', []))}")

    step(6, "Each owner reviews the exact code and signs an approval bound to its hash, data and policy")
    for pid in ids.values():
        retailer.decide_plugin(pid, names["retail"])
        bank.decide_plugin(pid, names["bank"])
    console.print(f"   {2 * len(ids)} signed approvals recorded")

    step(7, "The analyst submits the job; it runs in network-less sandboxes")
    spec = f"time_budget = {DEMO_TIME_BUDGET}\n" + scenario.job_spec(
        ids, recipient=analyst_name, retail=names["retail"], bank=names["bank"]
    )
    (work / "spend-model.toml").write_text(spec)
    cost = analyst.job_cost(spec)  # the dry run: the privacy charge and the noise, from the spec alone
    if cost["plan"]:
        parts = ", ".join(f"{name} {part['epsilon']:.2g}" for name, part in cost["plan"]["parts"].items())
        console.print(
            f"   differential privacy (the default): the job spends epsilon {cost['plan']['epsilon']:g}, "
            f"delta {cost['plan']['delta']:g} of each dataset's budget ({parts})"
        )
    job = analyst.submit_job(spec)
    # the retailer, an input owner, follows the phases; the analyst learns the outcome only at the job's
    # outcome time (its start plus the spec's time_budget), whatever happened inside
    final = retailer.wait_job(
        job["id"],
        timeout=900,
        on_update=lambda j: console.print(f"   {j['status']}" + (f" ({j['phase']})" if j.get("phase") else "")),
    )
    if final["status"] != "succeeded":
        raise SystemExit(
            f"the job ended {final['status']} ({final.get('error_class')}); "
            f"owners can read its log: cleanroom --profile demo-retailer job logs {job['id']}"
        )

    step(8, "The retailer's policy holds releases for review: it reads the checks and approves")
    release = retailer.get_release(job["id"])
    failed = [c["name"] for c in release["manifest"]["checks"] if not c.get("passed")]
    console.print(
        f"   {len(release['manifest']['checks'])} release checks, {len(failed)} failed; "
        f"outputs: {', '.join(release['manifest']['outputs'])}"
    )
    retailer.approve_release(job["id"])
    left = retailer.dataset_budget(names["retail"])
    console.print(
        f"   {names['retail']}: epsilon {left['remaining_epsilon']:g} of {left['epsilon']:g} left "
        "(charged at submission, never refunded)"
    )

    step(9, "The analyst downloads and decrypts the release, and verifies the signed receipt")
    console.print(f"   waiting for the job's outcome time ({DEMO_TIME_BUDGET} s after its start)")
    shown = analyst.wait_job(job["id"], timeout=900)
    if shown["status"] != "released":
        raise SystemExit(f"the analyst sees {shown['status']}")
    out = work / "out"
    analyst.get_result(job["id"], out)
    receipt = json.loads((out / "receipt.json").read_text())
    checked = verify_receipt(receipt, expected_fingerprint=room["keys"]["fingerprint"])
    console.print(f"   receipt signed by the room key {checked['fingerprint']}")

    step(10, "The analyst scores new customers on its own machine with the released model")
    from cleanroom.modelio import predict

    n = predict(out / "model.skops", files["new_customers"], work / "predictions.csv")
    console.print(f"   {n:,} predictions written to {work / 'predictions.csv'}")

    audit = admin.audit_verify()
    step(11, f"The audit log verifies: {audit['count']} events, hash chain intact = {audit['ok']}")
    metrics = json.loads((out / "metrics.json").read_text())
    table = (out / "aggregates" / "spend_by_region.csv").read_text()
    noisy = "noisy, differential privacy; " if metrics.get("differential_privacy") else ""
    console.print(f"\n[bold]Holdout metrics[/] ({noisy}model trained on the joined data, which neither side saw):")
    for key, value in metrics["metrics"].items():
        console.print(f"   {key:>6}: {value}")
    console.print(
        "\n[bold]Spend by region[/] ("
        + (
            "noisy counts and means of clipped spend, differential privacy"
            if metrics.get("differential_privacy")
            else "groups of at least k=10 customers"
        )
        + "):\n"
        + table
    )
    console.print(f"done in {time.monotonic() - started:.0f} s")
    return {"job": job["id"], "metrics": metrics["metrics"], "workdir": str(work)}
