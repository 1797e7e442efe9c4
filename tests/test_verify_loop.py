"""`train { verify every K }`: an update on the K-th, 2K-th, … step is accepted only if the prover
also says PROVED over the whole initial box; a candidate it does not prove is rejected like a
refuted certificate (ℓ doubled, solved again); the log says per step whether it was proved, and
`scpo audit` checks those records for consistency (it cannot redo a proof) and counts them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scpo_spec import load_run
from scpo_spec.audit.verify import audit_run, describe_stall
from scpo_spec.cli import app
from scpo_spec.compile.problem import compile_spec
from scpo_spec.engine.run import train
from scpo_spec.language.scenario_bounds import initial_box
from tests.engine_specs import small_di, spec_of, write_spec
from tests.forgery import copy_run, records, write_rechained

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def verify_every(text: str, k: int) -> str:
    """The spec with `verify every K` in its train section."""
    return text.replace("train {", f"train {{\n    verify every {k}", 1)


def trained(base: Path, text: str):
    path = write_spec(base, text, "spec.scpo")
    return train(path, spec_of(text, base), text, out=base / "run")


@pytest.fixture(scope="module")
def proved_run(tmp_path_factory):
    """specs/double_integrator.scpo, 3 steps, every update proved."""
    text = (ROOT / "specs" / "double_integrator.scpo").read_text().replace("steps 150", "steps 3")
    return trained(tmp_path_factory.mktemp("proved"), verify_every(text, 1)).run_dir


def steps_of(run: Path) -> list[dict]:
    return [r for r in records(run) if r["type"] == "step"]


def test_every_accepted_update_of_the_double_integrator_is_proved(proved_run):
    a = audit_run(proved_run)
    assert a.ok and a.complete and not a.problems
    assert a.proof_every == 1 and a.theta0_proved is True
    assert a.accepted >= 2 and a.proved_steps == a.accepted  # every accepted one, proved
    header, init = records(proved_run)[:2]
    margins = np.array([m["margin"] for m in header["metrics"]])
    assert init["proof"]["verdict"] == "PROVED"
    for step in steps_of(proved_run):
        assert step["proved"] is step["accepted"]
        proof = step["tries"][-1]["proof"]
        assert proof["verdict"] == "PROVED" and proof["cells"] >= 1
        assert proof["verdicts"] == ["PROVED"] * len(margins)
        bounds = np.array(proof["bounds"], dtype=np.float64)
        assert np.all(bounds <= -margins)
    # an independent look at the last proof: the final policy rolled out from 2000 random
    # initial states of the box by the ordinary evaluator stays below every proved bound
    run = load_run(proved_run)
    compiled = compile_spec(run.spec, run.base_dir)
    lo, hi = initial_box(run.spec)
    x0 = torch.as_tensor(np.random.default_rng(7).uniform(lo, hi, size=(2000, len(lo))))
    with torch.no_grad():
        g = compiled.evaluator.per_scenario(run.theta[None], x0)[0].numpy()
    assert np.all(g.max(axis=0) <= bounds)
    out = runner.invoke(app, ["audit", str(proved_run), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["proved_steps"] == a.accepted
    out = runner.invoke(app, ["audit", str(proved_run)])
    assert f"verify every 1: {a.accepted} accepted updates PROVED" in out.output


def test_a_spec_the_prover_cannot_prove_rejects_every_update(tmp_path):
    """`aggregate smooth` is refused by the prover (UNDECIDED, with the reason): θ₀ starts, no
    update is accepted, θ stays θ₀, and the log says why."""
    text = verify_every(small_di(steps=5, extra="aggregate smooth(0.01)"), 1)
    res = trained(tmp_path, text)
    assert res.ended == "completed" and res.state.accepted == 0
    assert torch.equal(res.state.theta,
                       compile_spec(spec_of(text, tmp_path), tmp_path).family.theta0)
    recs = records(res.run_dir)
    init = recs[1]
    assert init["proof"]["verdict"] == "UNDECIDED" and "aggregate smooth" in init["proof"]["reason"]
    steps = steps_of(res.run_dir)
    assert len(steps) == 5
    for step in steps:
        assert step["accepted"] is False and step["proved"] is False
        assert step["theta_next"] == step["theta"] == init["theta"]
        assert step["reason"].startswith("not proved over the whole initial box")
        assert {t["outcome"] for t in step["tries"]} == {"unproved"}
        assert all(t["verified"] is not None and t["proof"]["verdict"] == "UNDECIDED"
                   for t in step["tries"])
        # rejected like a refuted certificate: ℓ doubled from try to try
        ells = [np.array(t["ell"]) for t in step["tries"]]
        assert all(np.all(b == 2 * a) for a, b in zip(ells, ells[1:]))
        # … within the step only: a proof says nothing about smoothness, so every step starts
        # from the spec's ℓ again (never the refutation-style growth that would trip a stall)
        assert ells[0].tolist() == [m["smoothness"] for m in recs[0]["metrics"]]
    assert recs[-1]["type"] == "end" and recs[-1]["theta"] == init["theta"]
    a = audit_run(res.run_dir)
    assert a.ok and a.complete and a.proved_steps == 0 and a.theta0_proved is False
    assert a.stall is not None and a.stall["cause"] == "proof"
    assert "did not prove them over the whole initial box" in describe_stall(a.stall)


def test_verify_every_2_proves_every_second_step(tmp_path):
    res = trained(tmp_path, verify_every(small_di(steps=4), 2))
    steps = steps_of(res.run_dir)
    for step in steps:
        due = step["step"] % 2 == 1
        assert (step["proved"] is not None) == due
        assert any(t.get("proof") for t in step["tries"]) == (due and step["tries"][-1][
            "outcome"] in ("accepted", "unproved"))
    a = audit_run(res.run_dir)
    assert a.ok and a.proof_every == 2
    assert a.proved_steps == sum(s["accepted"] for s in steps if s["step"] % 2 == 1) >= 1


def _forged(proved_run, tmp_path, edit) -> list[str]:
    """The audit's problems with a copy of the run whose records `edit` changed, the chain
    and the state file re-made as a careful forger would."""
    tmp_path.mkdir(exist_ok=True)
    run = copy_run(proved_run, tmp_path / "forged")
    recs = records(run)
    edit(recs)
    write_rechained(run, recs, rebind=True)
    a = audit_run(run)
    assert not a.ok
    return a.problems


def _accepted_step(recs: list[dict]) -> dict:
    return next(r for r in recs if r["type"] == "step" and r["accepted"])


def test_a_re_chained_copy_still_audits_clean(proved_run, tmp_path):
    run = copy_run(proved_run, tmp_path / "copy")
    write_rechained(run, records(run), rebind=True)
    assert audit_run(run).ok


def test_a_forged_proved_flag_fails_the_audit(proved_run, tmp_path):
    def unproved(recs):
        _accepted_step(recs)["proved"] = False
    problems = _forged(proved_run, tmp_path, unproved)
    assert any("says proved = False" in p for p in problems)


def test_a_forged_proof_fails_the_audit(proved_run, tmp_path):
    def bound_above_margin(recs):
        _accepted_step(recs)["tries"][-1]["proof"]["bounds"][2] = 0.01
    assert any("PROVED with the bound 0.01" in p
               for p in _forged(proved_run, tmp_path / "a", bound_above_margin))

    def undecided_but_proved(recs):
        proof = _accepted_step(recs)["tries"][-1]["proof"]
        proof["verdicts"][0] = proof["verdict"] = "UNDECIDED"
    assert any("not PROVED for every metric" in p
               for p in _forged(proved_run, tmp_path / "b", undecided_but_proved))

    def no_initial_proof(recs):
        del recs[1]["proof"]
    assert any("no proof of θ₀" in p for p in _forged(proved_run, tmp_path / "c",
                                                       no_initial_proof))


# ---- the spec's `verify { cells  time_limit }`: scpo verify's defaults, and the loop's ----
def test_the_verify_section_is_scpo_verifys_default_and_the_flags_override_it(tmp_path):
    text = small_di(steps=1) + "verify { cells 3  time_limit 123 }\n"
    res = trained(tmp_path, text)
    for flags, cells, limit in (([], 3, 123.0), (["--cells", "5", "--time-limit", "50"], 5, 50.0)):
        out = runner.invoke(app, ["verify", str(res.run_dir), "--json", *flags])
        assert out.exit_code == 0, out.output
        verifier = json.loads((res.run_dir / "verify.json").read_text())["verifier"]
        assert (verifier["cells"], verifier["time_limit"]) == (cells, limit)


def test_the_spec_verify_section_bounds_the_loops_proofs(tmp_path, root):
    """linear_stability's Lyapunov ratio stays open at the origin whatever the cells (docs/
    verify.md): with `verify { cells 4 }` every proof of the loop spends exactly 4 cells and
    leaves it UNDECIDED, so no update is accepted."""
    text = ((root / "specs" / "linear_stability.scpo").read_text().replace("steps 200", "steps 2")
            .replace("grid 16", "grid 4").replace("holdout 1000", "holdout 20"))
    text = verify_every(text, 1) + "verify { cells 4 }\n"
    res = trained(tmp_path, text)
    recs = records(res.run_dir)
    proofs = [recs[1]["proof"]] + [t["proof"] for s in steps_of(res.run_dir) for t in s["tries"]
                                   if t.get("proof")]
    assert len(proofs) > 2
    for proof in proofs:
        assert proof["cells"] == 4 and proof["verdict"] == "UNDECIDED"
        assert dict(zip([m["name"] for m in recs[0]["metrics"]], proof["verdicts"]))["decay"] \
            == "UNDECIDED"
    assert res.state.accepted == 0 and audit_run(res.run_dir).ok


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_the_report_says_how_many_updates_were_proved(proved_run, tmp_path, fmt):
    out = runner.invoke(app, ["report", str(proved_run), "--format", fmt, "--out",
                              str(tmp_path / f"r.{fmt}")])
    assert out.exit_code == 0, out.output
    text = (tmp_path / f"r.{fmt}").read_text()
    n = audit_run(proved_run).proved_steps
    assert f"{n} accepted updates PROVED" in text.replace("<strong>", "").replace(
        "</strong>", "").replace("**", "")
    assert "on every step an update is accepted only if the prover" in text
    assert "safe over the whole initial box, not only on the scenarios" in text
