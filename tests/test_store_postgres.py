"""The store on a real PostgreSQL server (Debian's package, started by scripts/postgres.sh), and the
room on it with several API replicas.

- the store's own tests (tests/test_store.py), and API, ledger and storage tests of their own modules,
  run here again with every store on PostgreSQL (imported below: the same functions, this module's
  `store`, `room` and `world` fixtures);
- replicas: two API instances on one database, racing job submissions that together exceed a
  dataset's privacy budget (exactly the ones that fit are admitted; control: one instance, the same);
  two runners claiming on both (each job once); the audit chain still verifies;
- the write lock is what makes it so: a second replica's charge waits for the first one's transaction
  (control: without the lock it is admitted past the budget);
- the translation of SQLite's SQL (no server needed).

In CI (CI=true) a test that needs PostgreSQL fails when the server cannot be started; elsewhere it is
skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import scenario
from cleanroom.audit import verify_events
from cleanroom.client import Client
from cleanroom.errors import PolicyError, ValidationError
from cleanroom.profile import Profile
from cleanroom.store import audit, dialect, jobs, ledger
from cleanroom.store.db import MIGRATIONS, Store
from tests import test_dp_ledger
from tests.conftest import REPO, Room
from tests.redteam import test_storage

# The same tests, collected here again with this module's fixtures (every store on PostgreSQL).
from tests.redteam.test_storage import (  # noqa: F401
    test_a_pending_upload_reserves_its_name,
    test_concurrent_declarations_and_puts_race_safely,
    test_control_a_failed_uploads_orphan_is_reported_and_swept,
    test_retried_dataset_upload_keeps_its_ciphertext,
    test_sweeps_racing_uploads_of_an_old_orphans_bytes,
    test_withdrawing_a_pending_upload_frees_its_name_and_removes_no_bytes,
)
from tests.scenario_setup import setup_scenario
from tests.test_api import (  # noqa: F401
    test_an_org_rotates_its_own_token_and_an_admin_rotates_a_lost_one,
    test_bad_input_changes_nothing,
    test_bad_tokens_are_401_json,
    test_health_and_openapi,
    test_keys_registered_once,
    test_org_create_list_and_token_once,
    test_roles_are_enforced,
)
from tests.test_dp_ledger import (  # noqa: F401
    test_a_refused_submission_charges_nothing,
    test_budget_is_shown_to_the_owner_and_allowed_recipients_only,
    test_submission_charges_every_dp_input_with_the_per_job_cap_by_default,
    test_the_dataset_page_shows_the_budget_to_those_who_may_see_it,
)
from tests.test_store import (  # noqa: F401
    test_held_events_and_runner_instances,
    test_orgs_tokens_and_room,
    test_the_audit_chain_appends_and_reads_back,
    test_the_dataset_page_is_one_row_per_dataset_with_owner_and_policy,
    test_the_job_page_reads_owners_and_release_state_in_the_same_query,
    test_the_ledger_charges_inside_the_callers_transaction,
    test_the_org_pages_cover_every_org_once_and_skip_the_runner,
    test_the_plugin_page_carries_approvals_and_the_viewers_own_submission,
)

POSTGRES_SH = REPO / "scripts" / "postgres.sh"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"PostgreSQL is needed in CI and could not be started: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason} (scripts/postgres.sh install, or CI=true to make this fail)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the whole session (scripts/postgres.sh start/stop): its URL."""
    folder = tempfile.mkdtemp(prefix="cleanroom-pg-")
    started = subprocess.run(
        ["bash", str(POSTGRES_SH), "start", folder],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        _unavailable(started.stderr.strip()[-600:] or f"scripts/postgres.sh exited {started.returncode}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(
            ["bash", str(POSTGRES_SH), "stop", folder], capture_output=True, timeout=120, stdin=subprocess.DEVNULL
        )


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A database of its own for one test: a fresh schema, named in the URL's search path."""
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{postgres_server}?options=-csearch_path%3D{schema}"


@pytest.fixture
def store(tmp_path: Path, pg_url: str) -> Iterator[Store]:
    s = Store(tmp_path / "data", pg_url)
    yield s
    s.close()


@pytest.fixture
def room(tmp_path: Path, pg_url: str) -> Iterator[Room]:
    r = Room(tmp_path / "api-data", database_url=pg_url)
    yield r
    r.stop()
    r.store.close()


@pytest.fixture
def world(request: pytest.FixtureRequest, room: Room, tmp_path: Path) -> Any:
    """The `world` of the module the test comes from, in a room on PostgreSQL."""
    if request.function.__module__ == test_dp_ledger.__name__:
        test_dp_ledger.register_room_key(room)
        retailer, bank, analyst, _, ids = setup_scenario(room.org, tmp_path, n=300, approve=True)
        return room, retailer, bank, analyst, ids
    return test_storage.World(room, tmp_path)


# the schema -------------------------------------------------------------------------------------


def test_the_same_migrations_make_the_schema_once(store: Store) -> None:
    assert store.dialect == dialect.POSTGRES and store.db_path is None
    assert store.migrate() == len(MIGRATIONS)  # a second run changes nothing
    with store.read() as conn:
        assert {"jobs_created", "approvals_plugin", "plugins_order", "jobs_held"} <= dialect.index_names(conn)
        types = {
            (r[0], r[1]): r[2]
            for r in conn.raw.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema()"
            )
        }
    assert types["jobs", "created_at"] == "double precision"  # not PostgreSQL's 4-byte REAL
    assert types["datasets", "size"] == "bigint"  # ciphertexts above 2 GiB
    assert types["uploads", "name"] == "text"  # a column a later migration added


def test_two_replicas_starting_together_apply_each_migration_once(tmp_path: Path, pg_url: str) -> None:
    made: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            made.append(Store(tmp_path / "data", pg_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(made) == 3
    with made[0].read() as conn:
        assert conn.raw.execute("SELECT version FROM cleanroom_schema").fetchall() == [(len(MIGRATIONS),)]
    for s in made:
        s.close()


def test_text_postgresql_cannot_hold_is_refused_with_a_clear_error(store: Store) -> None:
    from cleanroom.store import orgs

    with pytest.raises(ValidationError, match="NUL"):
        with store.tx() as conn:
            orgs.create(conn, org_id="org_x", name="bad\x00name", roles=[], created_at=1.0)
    with store.tx() as conn:  # control: the store still writes, and the refused row is not there
        orgs.create(conn, org_id="org_y", name="good", roles=["owner"], created_at=1.0)
    with store.read() as conn:
        assert orgs.names(conn) == ["good"]


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot connect to the database postgresql://u:\\*\\*\\*@127.0.0.1:1/db"):
        Store(tmp_path / "data", "postgresql://u:secret@127.0.0.1:1/db?connect_timeout=2")


# the write lock ---------------------------------------------------------------------------------


def _charge_in_open_tx(store: Store, job_id: str, hold: threading.Event, holding: threading.Event) -> None:
    from cleanroom.policy import combine, parse_policy

    policy = parse_policy("[privacy]\nepsilon = 2\n")
    effective = combine({"d": policy})
    effective = type(effective)(**{**effective.__dict__, "job_epsilon": 1.5, "job_delta": 1e-7})
    with store.tx() as conn:
        ledger.charge(
            conn,
            job_id=job_id,
            recipient="acme",
            datasets={"d": {"policy": policy}},
            effective=effective,
            room_epsilon=None,
            now=0.0,
        )
        holding.set()
        hold.wait(30)


def _second_replica_charges(store_a: Store, store_b: Store) -> tuple[BaseException | None, float]:
    """Replica A charges 1.5 of 2 and keeps its transaction open; replica B charges 1.5 meanwhile.
    Returns B's error (None: admitted) and how long B waited."""
    hold, holding = threading.Event(), threading.Event()
    first = threading.Thread(target=_charge_in_open_tx, args=(store_a, "j1", hold, holding))
    first.start()
    assert holding.wait(30)
    outcome: list[Any] = []

    def second() -> None:
        t0 = time.monotonic()
        try:
            go = threading.Event()
            go.set()
            _charge_in_open_tx(store_b, "j2", go, threading.Event())  # commits at once
            outcome.append(None)
        except PolicyError as exc:
            outcome.append(exc)
        outcome.append(time.monotonic() - t0)

    other = threading.Thread(target=second)
    other.start()
    time.sleep(0.5)  # B has had time to pass the check if nothing stopped it
    hold.set()
    first.join(30)
    other.join(30)
    return outcome[0], outcome[1]


def test_a_second_replicas_charge_waits_for_the_first_and_is_refused(tmp_path: Path, pg_url: str) -> None:
    a, b = Store(tmp_path / "a", pg_url), Store(tmp_path / "b", pg_url)
    try:
        refused, waited = _second_replica_charges(a, b)
        assert isinstance(refused, PolicyError) and "has epsilon 0.5" in str(refused)
        assert waited >= 0.4  # it waited for the first transaction's commit
        with a.read() as conn:
            assert [c["job_id"] for c in ledger.charges(conn, dataset="d")] == ["j1"]
    finally:
        a.close()
        b.close()


def test_control_without_the_write_lock_both_replicas_charge(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the lock prevents: at READ COMMITTED the second check does not see the first, uncommitted
    charge, and the dataset is charged 3 of its 2."""
    monkeypatch.setattr(dialect.PostgresBackend, "begin_write", lambda self, conn: conn.raw.execute("BEGIN"))
    a, b = Store(tmp_path / "a", pg_url), Store(tmp_path / "b", pg_url)
    try:
        refused, _ = _second_replica_charges(a, b)
        assert refused is None
        with a.read() as conn:
            assert ledger.spent(conn, dataset="d")[0] == 3.0
    finally:
        a.close()
        b.close()


# replicas through the API -----------------------------------------------------------------------


class Replicas:
    """Two API instances (uvicorn each) on one PostgreSQL database and one shared data directory, with
    the same preset admin token, as an operator runs them behind a load balancer."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.token = "crt_" + secrets.token_hex(8) + "." + secrets.token_urlsafe(32)
        data = tmp_path / "shared-data"
        self.rooms = [Room(data, database_url=url, bootstrap_token=self.token) for _ in range(2)]
        for r in self.rooms:
            r.admin_token = self.token
            r.admin = Client(r.url, self.token, profile=Profile(name="admin-replicas"))
        self.a, self.b = self.rooms

    def stop(self) -> None:
        for r in self.rooms:
            r.stop()
            r.store.close()


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[Replicas]:
    r = Replicas(tmp_path, pg_url)
    yield r
    r.stop()


def _on(room: Room, client: Client) -> Client:
    """The same org (token and keys) talking to another replica."""
    return Client(room.url, client.token, profile=client.profile)


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at once (a barrier), each in its own thread; their results or exceptions in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the caller counts them
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _audit_ok(room: Room) -> list[dict[str, Any]]:
    with room.store.read() as conn:
        events = audit.all_events(conn)
    assert verify_events(events)["ok"], verify_events(events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # linear: no gap, no fork
    return events


def _racing_submissions(rooms: list[Room], analyst: Client, ids: dict[str, str], n: int) -> list[Any]:
    clients = [_on(r, analyst) for r in rooms]
    spec = scenario.job_spec(ids, epsilon=0.5)  # budget 3.0: six of them fit
    return _race([lambda c=clients[i % len(clients)]: c.submit_job(spec) for i in range(n)])


def test_replicas_racing_submissions_admit_exactly_what_the_budget_holds(replicas: Replicas, tmp_path: Path) -> None:
    test_dp_ledger.register_room_key(replicas.a)
    retailer, bank, analyst, _, ids = setup_scenario(replicas.a.org, tmp_path, n=200, approve=True)
    results = _racing_submissions(replicas.rooms, analyst, ids, 10)
    admitted = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, PolicyError)]
    assert len(admitted) == 6 and len(refused) == 4, results
    assert all("privacy budget" in str(e) or "has epsilon" in str(e) for e in refused), refused
    for name, owner in (("retail.purchases", retailer), ("bank.customers", bank)):
        budget = _on(replicas.b, owner).dataset_budget(name)
        assert budget["spent_epsilon"] == pytest.approx(3.0) and budget["remaining_epsilon"] == pytest.approx(0)
        assert {c["job_id"] for c in budget["charges"]} == {j["id"] for j in admitted}
    events = _audit_ok(replicas.b)
    assert sum(1 for e in events if e["action"] == "job.submitted") == 6


def test_control_one_instance_admits_the_same(room: Room, tmp_path: Path) -> None:
    test_dp_ledger.register_room_key(room)
    _, _, analyst, _, ids = setup_scenario(room.org, tmp_path, n=200, approve=True)
    results = _racing_submissions([room], analyst, ids, 10)
    assert sum(1 for r in results if isinstance(r, dict)) == 6
    assert sum(1 for r in results if isinstance(r, PolicyError)) == 4
    _audit_ok(room)


def test_runners_claiming_on_both_replicas_claim_each_job_once(replicas: Replicas, tmp_path: Path) -> None:
    test_dp_ledger.register_room_key(replicas.a)
    _, _, analyst, _, ids = setup_scenario(replicas.a.org, tmp_path, n=200, approve=True)
    submitted = {analyst.submit_job(scenario.job_spec(ids, epsilon=0.25))["id"] for _ in range(8)}  # delta: ten fit
    runner_token = replicas.a.runner_token

    def runner(room: Room, instance: str) -> Callable[[], list[str]]:
        def claim_all() -> list[str]:
            claimed = []
            with httpx.Client(
                base_url=room.url, headers={"authorization": f"Bearer {runner_token}"}, timeout=60
            ) as http:
                assert (
                    http.post("/runner/heartbeat", json={"instance": instance, "name": instance, "ttl": 60}).status_code
                    == 200
                )
                while True:
                    resp = http.post("/runner/claim", json={"instance": instance})
                    assert resp.status_code == 200, resp.text
                    job = resp.json()["job"]
                    if job is None:
                        return claimed
                    claimed.append(job)

        return claim_all

    results = _race(
        [
            runner(replicas.a, "runner-a"),
            runner(replicas.b, "runner-b"),
            runner(replicas.a, "runner-c"),
            runner(replicas.b, "runner-d"),
        ]
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    claimed = [job for r in results for job in r]
    assert sorted(claimed) == sorted(submitted)  # every job, each once
    assert sum(1 for r in results if r) >= 2, "one runner claimed everything: no race took place"
    with replicas.b.store.read() as conn:
        rows = {j: jobs.load(conn, job_id=j) for j in submitted}
    assert {(r["status"], r["attempts"]) for r in rows.values()} == {("running", 1)}
    _audit_ok(replicas.a)


# translation (no server) ------------------------------------------------------------------------


def test_the_translation_rewrites_placeholders_and_sqlite_functions_but_not_literals() -> None:
    sql = (
        "SELECT group_concat(d.owner_id), json_extract(j.spec, '$.recipient') FROM jobs AS j,"
        " json_each(j.spec, '$.inputs') AS i WHERE x = ? AND y = :me AND z = 'a?b :c 100%' AND w::text = :me"
    )
    assert dialect.translate(sql) == (
        "SELECT string_agg(d.owner_id, ','), (j.spec::json ->> 'recipient') FROM jobs AS j,"
        " json_array_elements(j.spec::json -> 'inputs') AS i(value) WHERE x = %s AND y = %(me)s"
        " AND z = 'a?b :c 100%' AND w::text = %(me)s"
    )
    assert dialect.translate("SELECT a % b FROM t WHERE c = ?") == "SELECT a %% b FROM t WHERE c = %s"


def test_sqlite_only_sql_without_a_translation_is_refused() -> None:
    for sql in (
        "INSERT OR IGNORE INTO t VALUES (?)",
        "PRAGMA user_version",
        "SELECT json_extract(a, '$.b.c')",
        "SELECT name FROM sqlite_master",
    ):
        with pytest.raises(dialect.Untranslatable):
            dialect.translate(sql)


def test_the_migrations_types_become_postgresqls() -> None:
    ddl = dialect.translate_ddl("CREATE TABLE t (seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, at REAL, s TEXT)")
    assert ddl == (
        "CREATE TABLE t (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL,"
        " at DOUBLE PRECISION, s TEXT)"
    )
    for number, script in enumerate(MIGRATIONS, start=1):  # every migration translates
        for statement in script.split(";"):
            assert statement.strip() == "" or dialect.translate_ddl(statement), number


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, ("sqlite", "DATA/cleanroom.db")),
        ("", ("sqlite", "DATA/cleanroom.db")),
        ("sqlite:///rel/x.db", ("sqlite", "rel/x.db")),
        ("sqlite:////abs/x.db", ("sqlite", "/abs/x.db")),
        ("postgresql://u:p@h/db", ("postgresql", "postgresql://u:p@h/db")),
        ("postgres://h:5432/db", ("postgresql", "postgres://h:5432/db")),
    ],
)
def test_the_database_url_names_the_backend(url: str | None, expected: tuple[str, str]) -> None:
    assert dialect.parse_url(url, Path("DATA")) == expected


@pytest.mark.parametrize("url", ["mysql://h/db", "sqlite://x.db", "sqlite:///", "postgresql://h/"])
def test_a_database_url_the_store_cannot_use_is_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        dialect.parse_url(url, Path("DATA"))


def test_the_setting_reaches_the_store(tmp_path: Path) -> None:
    from cleanroom.settings import Settings

    settings = Settings.from_env(
        {"CLEANROOM_DATABASE_URL": f"sqlite:///{tmp_path}/elsewhere.db", "CLEANROOM_DATA_DIR": str(tmp_path / "data")}
    )
    store = Store(settings.data_dir, settings.database_url)
    assert store.db_path == tmp_path / "elsewhere.db" and store.db_path.exists()
    assert not (tmp_path / "data" / "cleanroom.db").exists()  # control: not the default file
    assert Store(tmp_path / "d2").db_path == tmp_path / "d2" / "cleanroom.db"
    store.close()
