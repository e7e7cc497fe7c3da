"""The motivating scenario's set-up, shared by the tests that need it: two owners upload the retail and
bank files, an analyst submits the built-in plugins of the scenario, and (optionally) both owners
approve them. `make_org(name, role)` returns a client for a new org (e.g. `Room.org`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cleanroom import scenario
from cleanroom.prepare.ingest import new_join_secret

REPO = Path(__file__).resolve().parent.parent


def setup_scenario(
    make_org: Callable[[str, str], Any],
    tmp_path: Path,
    n: int = 1000,
    *,
    approve: bool = False,
    analyst_name: str = "acme-analytics",
) -> tuple[Any, Any, Any, dict, dict]:
    """Returns (retailer, bank, analyst, files, plugin ids by name)."""
    retailer, bank = make_org("retailer", "owner"), make_org("bank", "owner")
    analyst = make_org(analyst_name, "analyst")
    files = scenario.write_data(tmp_path / "data", n)
    secret = new_join_secret()
    retailer.upload_dataset(
        files["retail"],
        name="retail.purchases",
        policy=scenario.RETAIL_POLICY,
        id_column="customer_id",
        join_secret=secret,
    )
    bank.upload_dataset(
        files["bank"], name="bank.customers", policy=scenario.BANK_POLICY, id_column="customer_id", join_secret=secret
    )
    ids = {name: analyst.submit_plugin(REPO / "plugins" / name)["id"] for name in scenario.PLUGINS}
    if approve:
        approve_all(retailer, bank, ids)
    return retailer, bank, analyst, files, ids


def approve_all(retailer: Any, bank: Any, ids: dict[str, str]) -> None:
    for pid in ids.values():
        retailer.decide_plugin(pid, "retail.purchases")
        bank.decide_plugin(pid, "bank.customers")
