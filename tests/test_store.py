"""The store's query modules on a real SQLite file: what each returns, and that the list pages are one
keyset-ordered query that neither repeats nor skips rows across pages."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cleanroom.errors import NotFound, PolicyError
from cleanroom.store import approvals, audit, datasets, jobs, ledger, orgs, plugins, releases, room, runners
from cleanroom.store.db import MIGRATIONS, Store


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def _org(conn: Any, name: str, roles: list[str], t: float = 1.0) -> str:
    org_id = f"org_{name}"
    orgs.create(conn, org_id=org_id, name=name, roles=roles, created_at=t)
    return org_id


def _dataset(conn: Any, name: str, owner: str, t: float = 1.0) -> None:
    datasets.create(
        conn,
        name=name,
        owner_id=owner,
        sha256=name.encode().hex().ljust(64, "0")[:64],
        size=10,
        row_count=5,
        schema={"columns": [{"name": "_pid"}, {"name": "x"}]},
        mock=[{"x": 1}],
        dropped=[],
        description="",
        created_at=t,
    )
    datasets.add_policy(conn, name=name, version=1, text="", policy={"privacy": {}}, sha256="p" * 64, created_at=t)


def _job(conn: Any, job_id: str, org_id: str, inputs: list[str], recipient: str, t: float) -> None:
    jobs.create(
        conn,
        job_id=job_id,
        org_id=org_id,
        name=job_id,
        effective_policy={},
        created_at=t,
        spec={"inputs": [{"dataset": d} for d in inputs], "recipient": recipient, "steps": []},
    )


def test_migrations_apply_once_and_add_the_page_indexes(store: Store) -> None:
    assert store.migrate() == len(MIGRATIONS)  # a second run changes nothing
    with store.read() as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_created", "approvals_plugin", "plugins_order"} <= names


def test_orgs_tokens_and_room(store: Store) -> None:
    with store.tx() as conn:
        org_id = _org(conn, "bank", ["owner"])
        orgs.add_token(conn, token_id="t1", org_id=org_id, secret_hash="h", created_at=1.0)
        room.set_keys(conn, keys={"enc_public": "e", "sign_public": "s"})
    with store.read() as conn:
        assert orgs.by_name(conn, name="bank") == orgs.by_id(conn, org_id=org_id)
        assert orgs.by_name(conn, name="nobody") is None  # control
        owner = orgs.token_owner(conn, token_id="t1")
        assert owner is not None and owner["name"] == "bank" and owner["roles"] == ["owner"]
        assert orgs.live_token_hash(conn, token_id="t1", org_id=org_id) == "h"
        assert room.keys(conn) == {"enc_public": "e", "sign_public": "s"}
        assert room.counts(conn)["orgs"] == 1
    with store.tx() as conn:
        orgs.revoke_tokens(conn, org_id=org_id, at=2.0)
    with store.read() as conn:
        assert orgs.live_token_hash(conn, token_id="t1", org_id=org_id) is None


def test_the_org_pages_cover_every_org_once_and_skip_the_runner(store: Store) -> None:
    with store.tx() as conn:
        for name in ("c-org", "a-org", "runner", "b-org", "d-org"):
            _org(conn, name, ["analyst"])
    seen: list[str] = []
    after = None
    with store.read() as conn:
        while True:
            page = orgs.page(conn, after=after, limit=2)
            seen += [o["name"] for o in page]
            if len(page) < 2:
                break
            after = page[-1]["name"]
    assert seen == ["a-org", "b-org", "c-org", "d-org"]


def test_the_dataset_page_is_one_row_per_dataset_with_owner_and_policy(store: Store) -> None:
    with store.tx() as conn:
        bank, shop = _org(conn, "bank", ["owner"]), _org(conn, "shop", ["owner"])
        _dataset(conn, "bank.a", bank)
        _dataset(conn, "shop.b", shop)
        datasets.withdraw(conn, name="shop.b", at=3.0)
    with store.read() as conn:
        mine = datasets.page(conn, viewer_id=bank, all_withdrawn=False, after=None, limit=10)
        assert [(d["name"], d["owner"], d["policy_sha256"]) for d in mine] == [("bank.a", "bank", "p" * 64)]
        assert "mock" not in mine[0]  # lists never read the mock sample
        theirs = datasets.page(conn, viewer_id=shop, all_withdrawn=False, after=None, limit=10)
        assert [d["name"] for d in theirs] == ["bank.a", "shop.b"]  # its owner still lists a withdrawn one
        assert [
            d["name"] for d in datasets.page(conn, viewer_id=bank, all_withdrawn=False, after="bank.a", limit=10)
        ] == []
        with pytest.raises(NotFound):
            datasets.load(conn, name="nope")


def test_the_plugin_page_carries_approvals_and_the_viewers_own_submission(store: Store) -> None:
    with store.tx() as conn:
        bank, acme, rival = (
            _org(conn, "bank", ["owner"]),
            _org(conn, "acme", ["analyst"]),
            _org(conn, "rival", ["analyst"]),
        )
        _dataset(conn, "bank.a", bank)
        for i, name in enumerate(("alpha", "beta", "gamma")):
            plugins.create(
                conn,
                plugin_id=f"{i}" * 64,
                manifest={"name": name, "version": "1", "kind": "analysis"},
                review={"findings": []},
                size=1,
                submitted_by=acme,
                created_at=10.0 + i,
            )
        plugins.add_user(conn, plugin_id="1" * 64, org_id=rival, created_at=20.0)
        for n, decision in enumerate(("approve", "reject")):
            approvals.record(
                conn,
                approval_id=f"apr{n}",
                plugin_id="0" * 64,
                dataset="bank.a",
                org_id=bank,
                signature=f"sig{n}",
                at=30.0 + n,
                payload={"policy_version": 1, "dataset_sha256": "d", "decision": decision, "reason": ""},
            )
    with store.read() as conn:
        every = plugins.page(conn, viewer_id=bank, all_plugins=True, after=None, limit=2)
        assert [p["name"] for p in every] == ["alpha", "beta"]
        assert every[0]["review"] == {"findings": []}
        assert [(a["id"], a["decision"], a["org"], a["revoked_at"] is not None) for a in every[0]["approvals"]] == [
            ("apr0", "approve", "bank", True),
            ("apr1", "reject", "bank", False),
        ]  # the second replaced the first
        last = every[-1]
        rest = plugins.page(
            conn, viewer_id=bank, all_plugins=True, limit=2, after=(last["name"], last["created_at"], last["id"])
        )
        assert [p["name"] for p in rest] == ["gamma"]
        own = plugins.page(conn, viewer_id=rival, all_plugins=False, after=None, limit=10)
        assert [(p["name"], p["since"]) for p in own] == [("beta", 20.0)]  # only the bytes it submitted again
        assert plugins.load(conn, plugin_id="1" * 64)["users"] == {rival: 20.0}
        assert approvals.owners_in_force(conn, datasets=["bank.a"]) == set()  # the approval was replaced
        assert approvals.owners_in_force(conn, datasets=[]) == set()


def test_the_job_page_reads_owners_and_release_state_in_the_same_query(store: Store) -> None:
    with store.tx() as conn:
        bank, acme, other = (
            _org(conn, "bank", ["owner"]),
            _org(conn, "acme", ["analyst"]),
            _org(conn, "other", ["analyst"]),
        )
        _dataset(conn, "bank.a", bank)
        for i in range(5):
            _job(conn, f"job{i}", acme, ["bank.a"], "acme", t=100.0 + i)
        _job(conn, "job-other", other, ["bank.a"], "other", t=50.0)
        releases.create(
            conn,
            release_id="rel1",
            job_id="job3",
            recipient_id=acme,
            manifest={"outputs": {}},
            receipt={},
            review_by=["bank.a"],
            at=200.0,
        )
        releases.approve(conn, release_id="rel1", dataset="bank.a", org_id=bank, payload={}, signature="s", at=201.0)
    with store.read() as conn:
        statements = []
        conn.set_trace_callback(statements.append)
        page = jobs.page(conn, viewer_id=acme, viewer_name="acme", everything=False, status=None, after=None, limit=3)
        conn.set_trace_callback(None)
        assert len(statements) == 1  # one query for the whole page
        assert [j["id"] for j in page] == ["job4", "job3", "job2"]
        assert page[1]["owner_ids"] == {bank} and page[1]["submitter"] == "acme"
        assert page[1]["release"] is not None and page[1]["release"]["approved"] == {"bank.a"}
        assert page[0]["release"] is None
        rest = jobs.page(
            conn,
            viewer_id=acme,
            viewer_name="acme",
            everything=False,
            status=None,
            limit=3,
            after=(page[-1]["created_at"], page[-1]["id"]),
        )
        assert [j["id"] for j in rest] == ["job1", "job0"]  # not another analyst's job
        owner_view = jobs.page(
            conn, viewer_id=bank, viewer_name="bank", everything=False, status=None, after=None, limit=None
        )
        assert "job-other" in {j["id"] for j in owner_view}  # the input's owner sees every job over it
        listed = releases.page(conn, viewer_id=acme, viewer_name="acme", everything=False, after=None, limit=10)
        assert [(r["release"]["id"], r["recipient"], r["job"]["owner_ids"]) for r in listed] == [
            ("rel1", "acme", {bank})
        ]
        assert releases.page(conn, viewer_id=other, viewer_name="other", everything=False, after=None, limit=10) == []
        assert releases.decided(conn, release_id="rel1", dataset="bank.a") == "approved"


def test_held_events_and_runner_instances(store: Store) -> None:
    with store.tx() as conn:
        acme = _org(conn, "acme", ["analyst"])
        _job(conn, "j", acme, [], "acme", t=1.0)
        jobs.start(conn, job_id="j", runner="r1", at=2.0, reveal_at=100.0)
        jobs.set_held(conn, job_id="j", events=[{"action": "job.phase"}])
        runners.announce(conn, instance="i1", name="r", ttl=10.0, at=0.0)
        runners.announce(conn, instance="i2", name="r", ttl=10.0, at=5.0)  # the same name again: i1 ended
    with store.read() as conn:
        assert jobs.held_due(conn, at=50.0) == [] and not jobs.any_held_due(conn, at=50.0)
        assert jobs.held_due(conn, at=100.0) == [("j", [{"action": "job.phase"}])]
        assert runners.live(conn, at=6.0) == {"i2"}
        assert runners.known(conn, instance="i1")["ended_reason"] == "restarted"  # type: ignore[index]
        assert runners.live(conn, at=100.0) == set()  # silent longer than its ttl


def test_the_audit_chain_appends_and_reads_back(store: Store) -> None:
    from cleanroom.audit import verify_events

    with store.tx() as conn:
        for n in range(3):
            audit.append(conn, actor="a", action=f"x.{n}", object_type="room", object_id="room", ts=float(n))
    with store.read() as conn:
        assert [e["seq"] for e in audit.events_after(conn, after=1, limit=10)] == [2, 3]
        assert audit.count(conn) == 3 and audit.last(conn, action="x.1")["seq"] == 2  # type: ignore[index]
        assert verify_events(audit.all_events(conn))["ok"]


def test_the_ledger_charges_inside_the_callers_transaction(store: Store) -> None:
    from cleanroom.policy import combine, parse_policy

    policy = parse_policy("[privacy]\nepsilon = 2\n")
    effective = combine({"d": policy})
    effective = type(effective)(**{**effective.__dict__, "job_epsilon": 1.5, "job_delta": 1e-7})
    with store.tx() as conn:
        assert ledger.charge(
            conn,
            job_id="j1",
            recipient="acme",
            datasets={"d": {"policy": policy}},
            effective=effective,
            room_epsilon=None,
            now=0.0,
        ) == {"epsilon": 1.5, "delta": 1e-7}
    with pytest.raises(PolicyError, match="has epsilon 0.5"):
        with store.tx() as conn:
            ledger.charge(
                conn,
                job_id="j2",
                recipient="acme",
                datasets={"d": {"policy": policy}},
                effective=effective,
                room_epsilon=None,
                now=0.0,
            )
    with store.read() as conn:
        assert [c["job_id"] for c in ledger.charges(conn, dataset="d")] == ["j1"]  # the refused one left nothing
        view = ledger.remaining(conn, dataset="d", policy=policy)
        assert view["spent_epsilon"] == 1.5 and view["remaining_epsilon"] == 0.5


def test_no_sql_outside_the_store() -> None:
    """Every SQL statement the API host runs is in cleanroom/store (so another database changes one package)."""
    root = Path(__file__).resolve().parent.parent / "cleanroom"
    offenders = [
        str(p.relative_to(root))
        for folder in ("api",)
        for p in (root / folder).rglob("*.py")
        if ".execute(" in p.read_text()
    ]
    offenders += ["ledger.py"] if ".execute(" in (root / "ledger.py").read_text() else []
    assert offenders == []
    assert sqlite3.sqlite_version_info >= (3, 15)  # row values in the keyset comparisons
