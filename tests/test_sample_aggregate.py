"""Sample-and-aggregate (`cleanroom.runner.blocks`): the job spec, block assignment, answers mapped to
defaults, calibration, the noise's distribution and an empirical epsilon audit with hostile statistics.

Blocks here run the real compute-phase code (`cleanroom.sandbox.compute.phase.run`, real plugin bundles) in
this process instead of one container each; the Docker runs are in tests/redteam/test_sample_aggregate.py.
Statistical checks reject at about 1e-6 (OpenDP's noise cannot be seeded).
"""

from __future__ import annotations

import hashlib
import math
import statistics
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.stats as st

from cleanroom import bundle
from cleanroom.errors import PolicyError, ValidationError
from cleanroom.jobspec import check_job, parse_jobspec
from cleanroom.policy import parse_policy
from cleanroom.runner import blocks, recode
from cleanroom.sandbox.compute import phase as compute
from cleanroom.sandbox.release import dp_plan

SALT = bytes(range(32))  # tests only: production draws a fresh secrets.token_bytes(32) per job
STAT = "c" * 64
PREP = "d" * 64
GROUP = "e" * 64


def pseudonym(i: int) -> str:
    return hashlib.sha256(f"unit-{i}".encode()).hexdigest()


def arrow(df: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read(data: bytes) -> pd.DataFrame:
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all().to_pandas()


# -- the job spec -----------------------------------------------------------------------------------------


def spec_text(
    sa: str = "",
    *,
    steps: str = f'[[steps]]\nplugin = "{STAT}"\nparams = {{ columns = ["spend"] }}\n',
    outputs: str = "",
    top: str = "",
) -> str:
    sa = sa or 'blocks = 8\noutputs = [{ name = "median_spend", lo = 0, hi = 500, default = 0 }]\n'
    return (
        f'name = "sa-job"\nrecipient = "acme"\n{top}\n[[inputs]]\ndataset = "retail"\n\n{steps}\n'
        f"[outputs]\n{outputs}\n[outputs.sample_and_aggregate]\n{sa}"
    )


def test_spec_round_trips_and_keeps_the_declared_structure():
    spec = parse_jobspec(
        spec_text(
            'blocks = 16\naggregate = "median"\nblock_seconds = 20\noutputs = [\n'
            '  { name = "a", lo = -1, hi = 1, default = 0 },\n'
            '  { name = "b", lo = 0, hi = 10, default = 10 }]\n'
        )
    )
    sa = spec.outputs.sample_and_aggregate
    assert sa is not None and (sa.blocks, sa.aggregate, sa.block_seconds) == (16, "median", 20)
    assert [(o.name, o.lo, o.hi, o.default) for o in sa.outputs] == [("a", -1.0, 1.0, 0.0), ("b", 0.0, 10.0, 10.0)]
    assert type(spec).from_dict(spec.to_dict()) == spec
    plain = parse_jobspec(spec_text()).to_dict()["outputs"]["sample_and_aggregate"]
    assert plain == {
        "blocks": 8,
        "aggregate": "mean",
        "block_seconds": 30,
        "outputs": [{"name": "median_spend", "lo": 0.0, "hi": 500.0, "default": 0.0}],
    }


@pytest.mark.parametrize(
    ("sa", "top", "outputs", "message"),
    [
        ('blocks = 1\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]', "", "", "blocks .* must be 2 to 256"),
        ('blocks = 1000\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]', "", "", "must be 2 to 256"),
        ('outputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]', "", "", "needs 'blocks'"),
        ("blocks = 4", "", "", "needs 'outputs'"),
        ('blocks = 4\noutputs = [{ name = "x", lo = 2, hi = 2, default = 2 }]', "", "", "needs lo < hi"),
        ('blocks = 4\noutputs = [{ name = "x", lo = 5, hi = 1, default = 2 }]', "", "", "needs lo < hi"),
        ('blocks = 4\noutputs = [{ name = "x", lo = 0, hi = 1 }]', "", "", "needs 'default'"),
        ('blocks = 4\noutputs = [{ name = "x", lo = 0, hi = 1, default = 3 }]', "", "", "default 3 must be within"),
        ('blocks = 4\noutputs = [{ name = "x", lo = 0, hi = "1", default = 0 }]', "", "", "number"),
        ('blocks = 4\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0, extra = 1 }]', "", "", "extra"),
        ('blocks = 4\noutputs = [{ name = "x y", lo = 0, hi = 1, default = 0 }]', "", "", "output name"),
        (
            'blocks = 4\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }, { name = "x", lo = 0, hi = 1, '
            "default = 0 }]",
            "",
            "",
            "must be unique",
        ),
        ("blocks = 4\noutputs = []", "", "", "1 to 32"),
        (
            'blocks = 4\naggregate = "max"\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]',
            "",
            "",
            "aggregate must be one of mean, median",
        ),
        (
            'blocks = 4\nblock_seconds = 1\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]',
            "",
            "",
            "block_seconds must be",
        ),
        (
            'blocks = 40\nblock_seconds = 30\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]',
            "time_budget = 600",
            "",
            "may not end within time_budget",
        ),
        (
            'blocks = 4\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]',
            "",
            "model = true",
            "sample_and_aggregate is the job's only output",
        ),
    ],
)
def test_bad_sample_and_aggregate_specs_get_a_clear_error(sa, top, outputs, message):
    with pytest.raises(ValidationError, match=message):
        parse_jobspec(spec_text(sa, top=top, outputs=outputs))


def _manifest(name: str, kind: str) -> dict:
    return {
        "name": name,
        "version": "1.0.0",
        "kind": kind,
        "entry": "plugin.py",
        "description": name,
        "params": {"columns": {"type": "array", "items": "string", "default": []}},
    }


PLUGINS = {
    STAT: {"name": "stat", "kind": "statistic", "manifest": _manifest("stat", "statistic")},
    PREP: {"name": "prep", "kind": "preprocess", "manifest": _manifest("prep", "preprocess")},
    GROUP: {"name": "group", "kind": "analysis", "manifest": _manifest("group", "analysis")},
}
DP_POLICY = "[release]\nrecipients = ['acme']\n"


def _check(text: str, policy: str = DP_POLICY):
    datasets = {
        "retail": {"owner": "retail-org", "policy": parse_policy(policy), "policy_version": 1, "sha256": "1" * 64}
    }
    approvals = {(pid, "retail", 1, "1" * 64) for pid in PLUGINS}
    return check_job(
        parse_jobspec(text),
        datasets=datasets,
        plugins=PLUGINS,
        approvals=approvals,
        recipient_exists=True,
        budget_remaining={"retail": 3.0},
    )


def test_check_job_admits_one_statistic_step_last_and_charges_the_job_epsilon():
    effective = _check(
        spec_text(steps=f'[[steps]]\nplugin = "{PREP}"\n[[steps]]\nplugin = "{STAT}"\n', outputs="epsilon = 0.5")
    )
    assert effective.job_epsilon == 0.5
    assert _check(spec_text()).job_epsilon == 1.0  # the policy's per-job cap by default


@pytest.mark.parametrize(
    ("text", "policy", "message"),
    [
        (spec_text(steps=f'[[steps]]\nplugin = "{PREP}"\n'), DP_POLICY, "needs exactly one statistic step"),
        (
            spec_text(steps=f'[[steps]]\nplugin = "{STAT}"\n[[steps]]\nplugin = "{STAT}"\n'),
            DP_POLICY,
            "needs exactly one statistic step",
        ),
        (
            spec_text(steps=f'[[steps]]\nplugin = "{STAT}"\n[[steps]]\nplugin = "{PREP}"\n'),
            DP_POLICY,
            "statistic step must be the job's last",
        ),
        (
            spec_text(),
            "[release]\nrecipients = ['acme']\n[privacy]\nrequire_dp = false\n",
            "at least one input must use",
        ),
        (spec_text(), "[release]\nrecipients = ['acme']\n[outputs]\nallowed = ['model']\n", "does not allow aggregate"),
        (spec_text(outputs="epsilon = 2.0"), DP_POLICY, "allows at most epsilon 1"),
    ],
)
def test_check_job_refuses_what_sample_and_aggregate_cannot_run(text, policy, message):
    with pytest.raises(PolicyError, match=message):
        _check(text, policy)


def test_a_statistic_step_without_sample_and_aggregate_is_refused():
    text = spec_text(steps=f'[[steps]]\nplugin = "{GROUP}"\n[[steps]]\nplugin = "{STAT}"\n')
    text = text.split("[outputs.sample_and_aggregate]")[0] + "aggregates = true\n"
    with pytest.raises(PolicyError, match="statistic step but no \\[outputs.sample_and_aggregate\\]"):
        _check(text)


# -- blocks -----------------------------------------------------------------------------------------------


def test_removing_a_unit_leaves_every_other_units_block_unchanged():
    units = [pseudonym(i) for i in range(2000)]
    full = blocks.assign_blocks(units, 16, SALT)
    for gone in (0, 777, 1999):
        without = blocks.assign_blocks(units[:gone] + units[gone + 1 :], 16, SALT)
        assert without == {u: b for u, b in full.items() if u != units[gone]}
    assert blocks.assign_blocks(list(reversed(units)), 16, SALT) == full  # order does not matter either
    counts = np.bincount(list(full.values()), minlength=16)
    assert counts.min() > 2000 / 16 * 0.6  # roughly even
    other = blocks.assign_blocks(units, 16, bytes(32))
    assert sum(other[u] != full[u] for u in units) > 2000 * 0.8  # the salt decides: fresh per job, secret


def _inputs(n: int, target: bool = True) -> dict[str, pd.DataFrame]:
    ids = [pseudonym(i) for i in range(n)]
    rng = np.random.default_rng(3)
    retail = pd.DataFrame({"_pid": ids * 2, "spend": rng.uniform(0, 100, 2 * n)})  # two rows per unit
    bank = pd.DataFrame({"_pid": ids, "income": rng.uniform(0, 1000, n), "target": [0] * n})
    bank.loc[0, "target"] = 1
    if not target:
        retail, bank = retail[retail["_pid"] != ids[0]], bank[bank["_pid"] != ids[0]]
    return {"retail": retail, "bank": bank}


def test_split_puts_all_rows_of_a_unit_in_one_block_and_removal_changes_one_block_only():
    m = 6
    with_t = blocks.split_inputs({k: arrow(v) for k, v in _inputs(300).items()}, m, SALT)
    without = blocks.split_inputs({k: arrow(v) for k, v in _inputs(300, target=False).items()}, m, SALT)
    seen: dict[str, int] = {}
    for j, part in enumerate(with_t):
        for name in ("retail", "bank"):
            for pid in read(part[name])["_pid"]:
                assert seen.setdefault(pid, j) == j  # every row of a unit, in every input, in one block
    assert len(seen) == 300 and sum(len(read(p["retail"])) for p in with_t) == 600
    changed = [j for j in range(m) if with_t[j] != without[j]]
    assert changed == [seen[pseudonym(0)]]  # the other blocks' inputs are byte-for-byte the same


def test_each_block_gets_its_own_codes_so_no_block_sees_the_total_count():
    part = blocks.split_inputs({k: arrow(v) for k, v in _inputs(400).items()}, 4, SALT)[1]
    n_b = len(read(part["bank"]))
    meta, files = blocks.block_request(part, ["retail", "bank"], [], {}, job_id="j", max_output_bytes=1 << 20)
    codes = set(read(files["inputs/1.arrow"])["_pid"]) | set(read(files["inputs/0.arrow"])["_pid"])
    assert codes == set(range(n_b)) and n_b < 400  # 0..n_b-1: nothing about the other blocks' units
    assert [i["dataset"] for i in meta["inputs"]] == ["retail", "bank"]
    assert pytest.raises(
        recode.RecodeError,
        blocks.block_request,
        {"retail": b"junk", "bank": part["bank"]},
        ["retail", "bank"],
        [],
        {},
        job_id="j",
        max_output_bytes=1,
    )


# -- a block's answer -------------------------------------------------------------------------------------

OUTS = [blocks.Output("a", 0.0, 10.0, 7.0), blocks.Output("b", -1.0, 1.0, -1.0)]


@pytest.mark.parametrize(
    "answer",
    [
        None,
        "1,2",
        3.0,
        {"a": 1},
        [1.0],
        [1.0, 2.0, 3.0],
        [float("nan"), 0.0],
        [float("inf"), 0.0],
        [0.0, float("-inf")],
        ["1", 0.0],
        [True, 0.0],
        [[1.0], 0.0],
        [None, 0.0],
        [],
        [10**400, 0.0],
        [0.0, -(10**999)],
    ],
)
def test_every_bad_answer_becomes_the_default_vector(answer):
    assert blocks.parse_block(answer, OUTS) == [7.0, -1.0]


def test_good_answers_are_clipped_to_the_declared_ranges():
    assert blocks.parse_block([3.5, 0.25], OUTS) == [3.5, 0.25]
    assert blocks.parse_block([1e300, -5], OUTS) == [10.0, -1.0]
    assert blocks.parse_block([-1e300, 2], OUTS) == [0.0, 1.0]


class Hostile:
    def tolist(self):
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, 2.5], [1.0, 2.5]),
        (np.array([1.5, np.nan]), [1.5, None]),
        ((np.int64(3), np.float32(0.5)), [3.0, 0.5]),
        (pd.Series([1.0, 2.0]), [1.0, 2.0]),
        (["1", True, None, [1]], [None, None, None, None]),
        (Hostile(), None),
        ({"a": 1}, None),
        ("text", None),
        (5, None),
        (iter([1.0]), None),
        ([float("inf"), 10**400], [None, None]),
    ],
)
def test_the_compute_phase_sends_a_statistic_as_plain_numbers_or_nothing(value, expected):
    assert compute.block_vector(value) == expected


# -- calibration and noise --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "k", "epsilon", "lo", "hi"), [(8, 1, 1.0, 0.0, 500.0), (50, 3, 0.5, -2.0, 2.0), (200, 2, 4.0, 0.0, 1.0)]
)
def test_mean_calibration_matches_the_closed_form_and_spends_at_most_epsilon(m, k, epsilon, lo, hi):
    output = blocks.Output("x", lo, hi, lo)
    meas, scale = blocks.measurement(output, m, epsilon / k, "mean")
    assert meas.map(2) <= epsilon / k * (1 + 1e-12)  # one block changed: symmetric distance 2
    closed = dp_plan.sample_aggregate_scale(lo, hi, k, m, epsilon)
    assert closed == pytest.approx(k * (hi - lo) / (m * epsilon))
    assert scale == pytest.approx(closed, rel=1e-9)
    sa = {
        "blocks": m,
        "aggregate": "mean",
        "block_seconds": 30,
        "outputs": [{"name": f"o{i}", "lo": lo, "hi": hi, "default": lo} for i in range(k)],
    }
    plan = dp_plan.describe(epsilon, 1e-7, aggregates=False, model=False, metrics=False, sample_aggregate=sa)
    part = plan["parts"]["sample_and_aggregate"]
    assert part["epsilon"] == epsilon and part["outputs"]["o0"]["noise_scale"] == pytest.approx(scale, rel=1e-9)
    assert part["outputs"]["o0"]["interval_95"] == pytest.approx(scale * math.log(20), rel=1e-9)


def test_median_calibration_spends_at_most_epsilon():
    for m, epsilon in ((16, 1.0), (100, 0.25)):
        meas, _ = blocks.measurement(blocks.Output("x", 0.0, 100.0, 0.0), m, epsilon, "median")
        assert meas.map(2) <= epsilon * (1 + 1e-12)


def test_a_changed_block_moves_the_pre_noise_mean_by_at_most_range_over_m():
    m = 20
    base = [[blocks.parse_block([v, 0.0], OUTS)[0]] for v in np.linspace(0, 10, m)]
    for extreme in (None, [1e9, 0.0], [-1e9, 0.0], [float("nan"), 0.0]):  # adversarial neighbours
        changed = [list(v) for v in base]
        changed[7] = [blocks.parse_block(extreme, OUTS)[0]]
        moved = abs(statistics.fmean(v[0] for v in changed) - statistics.fmean(v[0] for v in base))
        assert moved <= (10.0 - 0.0) / m + 1e-12


def test_released_noise_has_the_documented_laplace_distribution():
    output, m, epsilon = blocks.Output("x", 0.0, 100.0, 0.0), 25, 0.8
    meas, scale = blocks.measurement(output, m, epsilon, "mean")
    column = [float(v) for v in np.linspace(0, 100, m)]
    draws = np.array([meas(column) for _ in range(20_000)])
    assert st.kstest(draws, st.laplace(loc=50.0, scale=scale).cdf).pvalue > 1e-6
    assert st.kstest(draws, st.laplace(loc=50.0, scale=scale * 1.15).cdf).pvalue < 1e-6  # control: power
    within = np.mean(np.abs(draws - 50.0) <= dp_plan.laplace_interval(scale))
    assert abs(within - 0.95) < 6 * math.sqrt(0.95 * 0.05 / len(draws))


def test_release_document_has_the_specs_names_and_nothing_per_block():
    sa = {
        "blocks": 10,
        "aggregate": "mean",
        "outputs": [{"name": "a", "lo": 0, "hi": 10, "default": 7}, {"name": "b", "lo": -1, "hi": 1, "default": -1}],
    }
    doc = blocks.release_document(sa, 1.0, blocks.aggregate([[1.0, 0.0]] * 10, OUTS, 1.0))
    assert set(doc) == {"mechanism", "aggregate", "blocks", "epsilon", "noise", "outputs"}
    assert [o["name"] for o in doc["outputs"]] == ["a", "b"]
    assert all(set(o) == {"name", "value", "lo", "hi", "noise_scale", "interval_95"} for o in doc["outputs"])
    lo, hi = doc["outputs"][0]["interval_95"]
    assert hi - lo == pytest.approx(2 * math.log(20) * 2 * 10 / (10 * 1.0))


def test_median_aggregate_is_accurate_with_many_agreeing_blocks():
    outs = [blocks.Output("x", 0.0, 100.0, 0.0)]
    values = [[50.0 + d] for d in np.random.default_rng(5).normal(0, 2, 200)]
    released = [blocks.aggregate(values, outs, 1.0, "median")[0] for _ in range(50)]
    assert all(abs(r["value"] - 50.0) <= 10.0 for r in released)
    assert released[0]["interval_95"] is None and released[0]["resolution"] == pytest.approx(0.5)


# -- hostile statistics through the real compute code, and the empirical epsilon audit (PRIVACY-DESIGN 9) --

HOSTILE = textwrap.dedent("""
    import math
    from cleanroom.hookspecs import hookimpl

    @hookimpl
    def block_statistic(df, params):
        here = bool((df["target"] == 1).any())
        mode = params["mode"]
        if mode == "leak":  # one person's value, as is
            return [float(df.loc[df["target"] == 1, "secret"].iloc[0]) if here else 0.0]
        if mode == "crash" and here:
            raise RuntimeError("the target is here")
        if mode == "nan" and here:
            return [math.nan]
        if mode == "wrong" and here:
            return [0.0, 0.0]
        if mode == "harmless":
            return [float(df["secret"].median())]
        return [0.0]
""")


def hostile_bundle(tmp_path: Path) -> tuple[str, bytes]:
    folder = tmp_path / "hostile"
    folder.mkdir(exist_ok=True)
    (folder / "plugin.py").write_text(HOSTILE)
    (folder / "cleanroom-plugin.toml").write_text(
        'name = "hostile"\nversion = "1.0.0"\nkind = "statistic"\nentry = "plugin.py"\n'
        'description = "returns a target\'s secret, or fails only for it"\n'
        '[params.mode]\ntype = "string"\nrequired = true\ndescription = "what to do"\n'
    )
    archive = bundle.pack(folder)
    return bundle.bundle_id(archive), archive


def people(n: int, target: bool) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(
        {"_pid": [pseudonym(i) for i in range(n)], "secret": rng.uniform(0, 100, n), "target": [1] + [0] * (n - 1)}
    )
    frame.loc[0, "secret"] = 100.0
    return {"people": frame if target else frame.iloc[1:]}


def block_values(
    tmp_path: Path, inputs: dict[str, pd.DataFrame], mode: str, outputs: list[blocks.Output], m: int, salt: bytes = SALT
) -> list[list[float]]:
    """Each block through the real compute-phase code (in this process), then `parse_block`."""
    pid, archive = hostile_bundle(tmp_path)
    step = {
        "plugin_id": pid,
        "name": "hostile",
        "kind": "statistic",
        "entry": "plugin.py",
        "params": {"mode": mode},
        "dataset": None,
    }
    values = []
    for j, part in enumerate(blocks.split_inputs({k: arrow(v) for k, v in inputs.items()}, m, salt)):
        meta, files = blocks.block_request(
            part, list(inputs), [step], {pid: archive}, job_id="t", max_output_bytes=1 << 26
        )
        workdir = tmp_path / f"w-{mode}-{len(list(tmp_path.iterdir()))}-{j}"
        workdir.mkdir()
        try:
            response, _ = compute.run(meta, files, str(workdir))
            answer = response.get("statistic")
        except compute.ComputeError:
            answer = None
        values.append(blocks.parse_block(answer, outputs))
    return values


def eps_lower_bound(out_d: np.ndarray, out_d2: np.ndarray, threshold: float, alpha: float = 1e-6) -> float:
    """Clopper-Pearson lower bound on epsilon from the event `output > threshold` (PRIVACY-DESIGN.md 9)."""
    n = len(out_d)
    k1, k0 = int(np.sum(out_d > threshold)), int(np.sum(out_d2 > threshold))
    p1_lo = st.beta.ppf(alpha / 2, k1, n - k1 + 1) if k1 else 0.0
    p0_hi = st.beta.ppf(1 - alpha / 2, k0 + 1, n - k0) if k0 < n else 1.0
    return float(np.log(p1_lo / p0_hi)) if p1_lo > 0 else 0.0


RUNS = 3000


@pytest.mark.parametrize("mode", ["leak", "crash", "nan", "wrong"])
def test_audit_hostile_statistics_stay_below_the_claimed_epsilon_and_no_noise_gives_a_large_bound(tmp_path, mode):
    m, epsilon = 10, 1.0
    outs = [blocks.Output("x", 0.0, 100.0, 100.0 if mode != "leak" else 0.0)]  # the analyst picks the default
    with_t = block_values(tmp_path, people(300, True), mode, outs, m)
    without = block_values(tmp_path, people(300, False), mode, outs, m, salt=bytes(32))  # any salt: fresh per job
    exact_d, exact_d2 = statistics.fmean(v[0] for v in with_t), statistics.fmean(v[0] for v in without)
    assert (exact_d, exact_d2) == (10.0, 0.0)  # the attack works on the block outputs: the target moves one block
    threshold = 5.0  # fixed before the runs: halfway between the two exact answers
    noisy_d = np.array([blocks.aggregate(with_t, outs, epsilon)[0]["value"] for _ in range(RUNS)])
    noisy_d2 = np.array([blocks.aggregate(without, outs, epsilon)[0]["value"] for _ in range(RUNS)])
    bound = eps_lower_bound(noisy_d, noisy_d2, threshold)
    assert 0.3 < bound <= epsilon  # the audit sees leakage, never more than claimed
    control = eps_lower_bound(np.full(RUNS, exact_d), np.full(RUNS, exact_d2), threshold)
    assert control > 4.0  # the same pipeline without noise: the audit has the power to catch a leak


def test_control_a_harmless_statistic_gives_an_accurate_answer(tmp_path):
    outs = [blocks.Output("x", 0.0, 100.0, 0.0)]
    values = block_values(tmp_path, people(600, True), "harmless", outs, 12)
    assert all(15 < v[0] < 85 for v in values)  # each block's median of ~50 uniform(0, 100): sd about 7
    released = blocks.aggregate(values, outs, 1.0)[0]
    assert abs(released["value"] - 50) < 5 + released["noise_scale"] * 14  # 1e-6 Laplace tail
    assert released["noise_scale"] == pytest.approx(100 / 12)


def test_job_cost_prints_the_noise_of_each_declared_output(capsys):
    from types import SimpleNamespace

    from cleanroom.cli.jobs import show_cost

    sa = parse_jobspec(
        spec_text(
            'blocks = 50\noutputs = [{ name = "median_spend", lo = 0, hi = 2500, default = 0 },'
            ' { name = "r2", lo = 0, hi = 1, default = 0 }]\n'
        )
    ).outputs.sample_and_aggregate
    assert sa is not None
    plan = dp_plan.describe(1.0, 1e-7, aggregates=False, model=False, metrics=False, sample_aggregate=sa.to_dict())
    show_cost(SimpleNamespace(as_json=False), {"admitted": True, "reason": None, "plan": plan, "budgets": {}})
    out = capsys.readouterr().out
    assert "sample_and_aggregate: epsilon 1" in out
    assert "median_spend in [0, 2500] over 50 blocks: noise scale 100, 95% within +-299.6" in out
    assert "r2 in [0, 1] over 50 blocks: noise scale 0.04," in out


def test_blocks_must_fit_in_the_time_budget_the_specs_or_the_rooms():
    from cleanroom.jobspec import check_time_budget

    fits = parse_jobspec(
        spec_text('blocks = 10\nblock_seconds = 30\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]\n')
    )
    check_time_budget(fits, 600)  # 10 (30 + 15) = 450 s
    with pytest.raises(PolicyError, match="may not end within the job's time budget of 400 s"):
        check_time_budget(fits, 400)
    longer = parse_jobspec(
        spec_text(
            'blocks = 10\nblock_seconds = 30\noutputs = [{ name = "x", lo = 0, hi = 1, default = 0 }]\n',
            top="time_budget = 500",
        )
    )
    check_time_budget(longer, 400)  # the spec's own budget wins


def test_the_api_refuses_bad_sample_and_aggregate_specs_with_a_clear_error_and_charges_nothing(room, tmp_path):
    from tests.scenario_setup import setup_scenario
    from tests.test_dp_ledger import register_room_key

    register_room_key(room)
    retailer, _, analyst, _, ids = setup_scenario(room.org, tmp_path, n=100, approve=True)
    stat = analyst.submit_plugin(Path(__file__).resolve().parent.parent / "plugins" / "block-quantile")["id"]
    retailer.decide_plugin(stat, "retail.purchases")
    text = (
        spec_text(
            'blocks = 8\noutputs = [{ name = "median_spend", lo = 0, hi = 2500, default = 0 }]\n',
            steps=f'[[steps]]\nplugin = "{stat}"\nparams = {{ columns = ["spend"] }}\n',
        )
        .replace('recipient = "acme"', 'recipient = "acme-analytics"')
        .replace('dataset = "retail"', 'dataset = "retail.purchases"')
    )
    for bad, message in (
        (text.replace("hi = 2500", "hi = 0"), "needs lo < hi"),
        (text.replace("blocks = 8", "blocks = 1"), "must be 2 to 256"),
        (text.replace(", default = 0", ""), "needs 'default'"),
        (text.replace("blocks = 8", "blocks = 200"), "may not end within the job's time budget"),
    ):
        with pytest.raises((ValidationError, PolicyError), match=message):
            analyst.submit_job(bad)
    assert retailer.dataset_budget("retail.purchases")["spent_epsilon"] == 0
    cost = analyst.job_cost(text)
    assert cost["admitted"], cost["reason"]
    assert cost["plan"]["parts"]["sample_and_aggregate"]["outputs"]["median_spend"]["noise_scale"] == pytest.approx(
        2500 / 8
    )
    assert analyst.submit_job(text)["status"] == "queued"  # control: the good spec is admitted and charged
    assert retailer.dataset_budget("retail.purchases")["spent_epsilon"] == pytest.approx(1.0)


def test_a_blocks_stream_has_no_trace_of_the_owners_batches():
    frame = _inputs(300)["bank"]
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=37):  # boundaries at global offsets, moved by other units
            writer.write_batch(batch)
    for part in blocks.split_inputs({"bank": sink.getvalue().to_pybytes()}, 4, SALT):
        with pa.ipc.open_stream(pa.py_buffer(part["bank"])) as reader:
            assert len(list(reader)) <= 1


@pytest.mark.docker
def test_plugin_test_shows_a_statistics_answer_on_mock_data(room, tmp_path):
    import os

    from cleanroom.local.plugin_test import test_plugin
    from tests.dockerutil import require_docker, require_image
    from tests.scenario_setup import setup_scenario
    from tests.test_dp_ledger import register_room_key

    require_image(require_docker(), "CLEANROOM_SANDBOX_IMAGE")
    register_room_key(room)
    _, _, analyst, _, _ = setup_scenario(room.org, tmp_path, n=100)
    image = os.environ.get("CLEANROOM_SANDBOX_IMAGE", "cleanroom-sandbox:latest")
    folder = Path(__file__).resolve().parent.parent / "plugins" / "block-quantile"
    out = test_plugin(analyst, folder, ["retail.purchases"], {"columns": ["spend", "visits"]}, image=image)
    assert out["ok"] is True and len(out["statistic"]) == 2 and 0 <= out["statistic"][0] <= 2500, out
    failing = test_plugin(analyst, folder, ["retail.purchases"], {"columns": ["no_such_column"]}, image=image)
    assert failing["ok"] is False and "no column" in failing["error"]  # control
