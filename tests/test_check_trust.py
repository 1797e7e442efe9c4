"""Checks that keep a spec from training into a stall, a vacuous certificate or an out-of-memory
crash, and diagnostics that report where a problem is written without echoing file contents."""

import json
import math
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.language import check_resources as CR
from scpo_spec.language import check_system as CS
from tests.helpers import VALID, as_pendulum, check, errors, replace
from tests.test_check_errors import GYM

runner = CliRunner()


def warnings(text, **kw):
    return [(d.span.line if d.span else 0, d.span.column if d.span else 0, d.message)
            for d in check(text, **kw).diagnostics if d.severity == "warning"]


# ---------------------------------------------------------------- 1. V(x₀) = 0
def test_lyapunov_grid_through_the_origin_is_an_error():
    # grid 3 over the symmetric box holds (0, 0), where V = xᵀPx of the LQR backup is 0
    text = replace("count 64", "grid 3")
    errs = errors(text)
    assert len(errs) == 1, errs
    line, col, msg = errs[0]
    assert (line, col) == (14, 10)  # the `grid` entry of the scenarios section
    assert msg.startswith("stability 'decay': lyapunov(backup) is undefined for 1 of the 9 grid "
                          "scenarios: V(x₀) = 0 at x₀ = [0, 0]"), msg
    d = next(d for d in check(text).diagnostics if d.severity == "error")
    assert "even" in d.hint


def test_lyapunov_even_grid_and_random_draws_are_fine():
    assert errors(replace("count 64", "grid 4")) == []
    assert errors(VALID) == []  # uniform draws hit V(x₀) = 0 with probability 0


def test_lyapunov_box_that_is_the_origin_is_an_error():
    text = replace("initial position in [-1, 1]", "initial position in [0, 0]",
                   replace("initial velocity in [-0.5, 0.5]", "initial velocity in [0, 0]"))
    assert (11, 1, "stability 'decay': lyapunov(backup) is undefined for every scenario: "
                   "V(x₀) = 0 on the whole initial box") in errors(text)


def test_lyapunov_of_a_constant_matrix_sees_its_null_space():
    # V = position², zero on the line position = 0, which the box [0, 0] × [-0.5, 0.5] is
    text = replace("stability decay: lyapunov(backup) <= 0.8 at final",
                   "stability decay: lyapunov(diag(1, 0)) <= 0.8 at final")
    assert errors(text) == []
    text = replace("initial position in [-1, 1]", "initial position in [0, 0]", text)
    assert any("lyapunov(diag(1, 0)) is undefined for every scenario" in e[2]
               for e in errors(text))


def test_lyapunov_floor_matches_the_evaluator():
    from scpo_spec.compile.signals import LYAPUNOV_FLOOR
    assert CS.LYAPUNOV_FLOOR == LYAPUNOV_FLOOR


def test_pendulum_linearisation_matches_the_dynamics():
    from scpo_spec.systems.dynamics import make_dynamics
    spec = check(as_pendulum()).spec
    A, B = make_dynamics(spec).linearisation()
    A2, B2 = CS.pendulum_linearisation(spec.system)
    np.testing.assert_array_equal(A, A2)
    np.testing.assert_array_equal(B, B2)


# ---------------------------------------------------------------- 2. vacuous holdout
def test_holdout_bound():
    from scpo_spec.language.scenario_bounds import HOLDOUT_BETA, holdout_bound
    assert holdout_bound(1000, 1e-6) == pytest.approx(math.log(1e6) / 1000)
    assert holdout_bound(1, HOLDOUT_BETA) == pytest.approx(13.8155, abs=1e-4)
    assert holdout_bound(0, 1e-6) is None
    from scpo_spec.engine import holdout
    assert holdout.BETA == HOLDOUT_BETA


def test_small_holdout_warns_at_its_count():
    text = replace("holdout 1000", "holdout 1")
    assert errors(text) == []
    assert warnings(text) == [(17, 13, "holdout 1 bounds P(violation) only by ln(1/β)/N = 13.8 "
                                       "(β = 1e-06): above 5 %, so it certifies nothing useful")]
    d = check(text).diagnostics[0]
    assert d.hint == "holdout 277 or more gives a bound of at most 5 %"
    assert warnings(replace("holdout 1000", "holdout 276"))
    assert warnings(replace("holdout 1000", "holdout 277")) == []
    assert warnings(replace("holdout 1000", "holdout 0")) == []


# ---------------------------------------------------------------- 3. resources
@pytest.fixture
def small_machine(monkeypatch):
    monkeypatch.setattr(CR, "machine_memory", lambda: 16 * 2**30)


def test_huge_policy_is_refused(small_machine):
    text = replace("hidden = [64, 64]", "hidden = [100000, 100000]")
    (err,) = errors(text)
    assert err[:2] == (10, 23)  # the hidden widths
    assert err[2].startswith("one evaluation of the candidate bank needs about ")
    assert "this machine has 16.0 GiB" in err[2]


def test_huge_holdout_is_refused(small_machine):
    text = replace("holdout 1000", "holdout 1e12")
    (err,) = errors(text)
    assert err == (17, 13, "holdout 1,000,000,000,000 is more than 1,000,000 scenarios (the "
                           "report rolls every one of them out)")


def test_a_holdout_beyond_the_machines_memory_is_refused(monkeypatch):
    monkeypatch.setattr(CR, "machine_memory", lambda: 256 * 2**20)
    (err,) = errors(replace("holdout 1000", "holdout 1000000"))
    assert err[:2] == (17, 13)
    assert err[2].startswith("the holdout evaluation needs about ") and "MiB" in err[2], err


def test_memory_estimate_counts_rollouts_activations_and_weights():
    spec = check(VALID).spec
    est = CR.memory_estimate(spec)
    C_, S, T, n, m = 18, 64, 60, 2, 1
    d = (2 * 64 + 64) + (64 * 64 + 64) + (64 * 1 + 1)
    assert est.weights == d
    assert est.bank == 8 * (C_ * S * (T + 1) * n + C_ * S * T * m + (64 + 64) * C_ * S
                            + d * C_)
    assert est.holdout > 1000 * 2 * 8


def test_ready_specs_fit_comfortably(small_machine, root):
    for path in sorted((root / "specs").glob("*.scpo")):
        assert errors(path.read_text(), base_dir=root / "specs") == [], path


def test_cli_refuses_without_traceback(tmp_path, small_machine):
    f = tmp_path / "big.scpo"
    f.write_text(replace("holdout 1000", "holdout 1e12"))
    result = runner.invoke(app, ["check", str(f)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "is more than 1,000,000 scenarios" in result.output


# ---------------------------------------------------------------- 4. diagnostics
@pytest.mark.parametrize("junk", ["1e-3e", "1.2.3", "12abc", "1e", "0x1F"])
def test_malformed_number_is_reported_where_it_is_written(junk):
    text = replace("perturbation 1e-3", f"perturbation {junk}")
    assert errors(text) == [(31, 18, f"malformed number '{junk}'")]


def test_cli_malformed_number(tmp_path):
    f = tmp_path / "n.scpo"
    f.write_text(replace("perturbation 1e-3", "perturbation 1e-3e"))
    result = runner.invoke(app, ["check", str(f)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{f}:31:18: error: malformed number '1e-3e'" in result.output


def test_valid_numbers_still_read():
    spec = check(replace("perturbation 1e-3", "perturbation 1.5E-3")).spec
    assert spec.train.perturbation.value == 1.5e-3
    assert errors(replace("horizon 60", "horizon 6-1")) == []
    assert errors(replace("horizon 60", "horizon 2e1+5")) == []


def test_csv_header_is_not_echoed_beyond_a_short_printable_excerpt(root, tmp_path):
    spec = (root / "specs" / "regression.scpo").read_text()
    secret = tmp_path / "env.csv"
    secret.write_bytes(b"A=" + b"s" * 500 + b"\x00B=\x1b[31mred\n1\n")
    text = spec.replace("../data/harmful.csv", str(secret))
    (d,) = [d for d in check(text, base_dir=root / "specs").diagnostics]
    assert len(d.hint) <= 120, d.hint
    assert "\x00" not in d.hint and "\x1b" not in d.hint and "s" * 100 not in d.hint


def test_proc_environ_is_not_echoed(root, tmp_path):
    spec = (root / "specs" / "regression.scpo").read_text()
    f = tmp_path / "s.scpo"
    f.write_text(spec.replace("../data/harmful.csv", "/proc/self/environ"))
    result = runner.invoke(app, ["check", "--json", str(f)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    payload = json.loads(result.stdout)
    (d,) = payload["files"][0]["diagnostics"]
    assert d["severity"] == "error" and len(d["hint"] or "") <= 120, d
    assert "\\u0000" not in result.stdout


# ---------------------------------------------------------------- 5. gymnasium missing
def test_gymnasium_missing_and_no_id(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # `import gymnasium` raises ImportError
    text = GYM.format(env="Pendulum-v1", obs="c, s, w").replace(' "Pendulum-v1"', "")
    errs = errors(text)
    assert (2, 1, "a gymnasium system needs the environment's id") in errs
    assert (2, 1, "gymnasium is not installed") in errs
    errs = errors(GYM.format(env="Pendulum-v1", obs="c, s, w"))
    assert errs == [(2, 18, "gymnasium is not installed")]


# ---------------------------------------------------------------- 3b. chunked holdout
def test_chunked_holdout_equals_one_batch(monkeypatch):
    """One chunk holding every scenario is the one-batch evaluation, bit for bit.  Smaller chunks
    give the same decisions (violations, bound, worst scenario) and values equal to the last few
    bits: BLAS picks its matmul kernel by batch size, so float64 sums may round differently
    (~1e-13); the default chunk depends on the spec alone, so the training log and the report's
    re-run of the holdout still agree exactly."""
    import torch

    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.plan.scenarios import holdout_chunk
    from scpo_spec.engine.holdout import holdout_violations, validate_holdout
    c = compile_spec(check(replace("holdout 1000", "holdout 203")).spec)
    theta = c.family.theta0 + 0.3 * torch.randn(c.family.theta0.shape,
                                                generator=torch.Generator().manual_seed(0),
                                                dtype=torch.float64)
    ev = c.holdout_evaluator()
    whole = ev.per_scenario(theta[None])[0].numpy()
    np.testing.assert_array_equal(holdout_violations(ev, theta, 203), whole)
    np.testing.assert_array_equal(holdout_violations(ev, theta, 10**6), whole)
    for chunk in (1, 7, 64):
        np.testing.assert_allclose(holdout_violations(ev, theta, chunk), whole, rtol=1e-12,
                                   atol=1e-12)
    one = validate_holdout(c, theta, chunk=10**6)
    for chunk in (1, 10):
        small = validate_holdout(c, theta, chunk=chunk)
        for key in ("count", "violations", "bound", "violations_per_metric", "worst_scenario"):
            assert small[key] == one[key], key
        assert small["worst"] == pytest.approx(one["worst"], rel=1e-12, abs=1e-12)
    assert validate_holdout(c, theta) == validate_holdout(c, theta)
    # every rollout holds at most `chunk` scenarios
    sizes = []
    real = type(ev).per_scenario
    monkeypatch.setattr(type(ev), "per_scenario",
                        lambda self, th, x0=None, *rest: sizes.append(len(x0))
                        or real(self, th, x0, *rest))
    validate_holdout(c, theta, chunk=50)
    assert sizes == [50, 50, 50, 50, 3]
    # the default chunk keeps one rollout under the budget
    assert holdout_chunk(60, 2, 1, [64, 64], budget=2**20) == 2**20 // (8 * (61 * 2 + 60 + 128))


@pytest.mark.parametrize("P", ["diag(1, -1)", "[[1, 3], [3, 1]]", "diag(-1, -1)"])
def test_lyapunov_of_a_matrix_that_is_not_positive_semidefinite_is_an_error(P):
    """V(x) = xᵀPx < 0 for some x₀: the ratio V(x_t)/V(x₀) then means nothing (it used to pass
    `check`, and the floor under V(x₀) made g about 5e10)."""
    text = replace("stability decay: lyapunov(backup) <= 0.8 at final",
                   f"stability decay: lyapunov({P}) <= 0.8 at final")
    errs = errors(text)
    assert len(errs) == 1, errs
    line, col, msg = errs[0]
    assert (line, col) == (21, 27)  # the matrix, inside lyapunov(…)
    assert msg.startswith("lyapunov's matrix is not positive semidefinite"), msg


@pytest.mark.parametrize("formula", [
    "always (at final always[1:2] position <= 1)",
    "eventually[0:3] at final eventually[1:1] position <= 0",
    "(at final eventually[2:4] position <= 1) until[3:8] (at final position <= 1)",
])
def test_an_empty_window_under_at_final_inside_another_operator_is_an_error(formula):
    """At the last step only a window starting at 0 holds a sample: found at the top level, it
    was missed once `at final` sat inside another temporal operator (g was always +inf)."""
    text = replace("constraint position_limit: always abs(position) <= 2.5 smoothness 50",
                   f"constraint position_limit: {formula} smoothness 50")
    msgs = [m for _, _, m in errors(text)]
    assert msgs and all("holds no sample" in m for m in msgs), msgs
