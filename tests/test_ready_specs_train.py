"""Every ready spec trains: zero accepted violations, a lower loss, a clean audit.  A few steps
of each by default; the full runs (the specs' own step counts) are marked slow."""

import json

import pytest

from scpo_spec.audit.verify import audit_run
from scpo_spec.report import gather
from scpo_spec.engine.run import train
from scpo_spec.language.load import check_file
from tests.conftest import SPECS


def run_spec(path, tmp_path, steps=None):
    result = check_file(path)
    assert result.ok
    return train(path, result.spec, result.source.text, out=tmp_path / "run", steps=steps)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_ready_spec_trains_a_few_steps_safely(path, tmp_path):
    res = run_spec(path, tmp_path, steps=3)
    a = audit_run(res.run_dir)
    assert a.ok, a.problems
    assert a.steps == 3 and a.accepted_violations == 0
    assert a.loss_last <= a.loss_first


@pytest.mark.slow
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_ready_spec_trains_in_full(path, tmp_path):
    res = run_spec(path, tmp_path)
    a = audit_run(res.run_dir)
    assert a.ok and a.complete, a.problems
    assert a.accepted_violations == 0
    assert a.loss_last < a.loss_first
    assert a.accepted > 0.5 * a.steps
    assert a.holdout["count"] > 0 and a.holdout["violations"] == 0, a.holdout
    evidence = gather(res.run_dir)  # every ready spec ends CERTIFIED
    assert evidence.certified, evidence.failures


@pytest.mark.slow
def test_the_malicious_expert_is_refused(tmp_path, root):
    """Following the malicious teacher would break the settle bound (its bias moves the
    equilibrium off the origin): the log shows the projection cutting its updates down (or
    rejecting them) while `settle` sits at its bound."""
    res = run_spec(root / "specs" / "double_integrator.scpo", tmp_path)
    records = [json.loads(l) for l in (res.run_dir / "audit.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("type") == "step"]
    # clipped raw step vs the update actually taken
    shrunk = [r for r in steps
              if r["update_norm"] < 0.5 * min(r["raw_norm"], 0.5)]
    assert len(shrunk) + sum(not r["accepted"] for r in steps) >= 10
    a = audit_run(res.run_dir)
    assert a.worst["settle"] > -1e-3  # the settle bound became active
    assert a.accepted_violations == 0
