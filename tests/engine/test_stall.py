"""The stall hint follows what the log says went wrong: each rejected step's last try (written
by engine/train.py) is a loss that did not decrease (Armijo), a rollout that broke the certified
bound, a rollout within the bound but not by the margin, or a projection with no answer; the
advice is for the cause most of the stalled steps share."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from scpo_spec.audit.verify import audit_run, describe_stall
from scpo_spec.cli import app
from scpo_spec.engine.train import Trainer
from tests.engine_specs import small_di, write_spec

runner = CliRunner()
SOLVER_HINT = "constraints leave almost no room"


def stalled_run(tmp_path, text: str = ""):
    """`scpo train` of small_di (8 steps): the audit's stall and the CLI summary in one line."""
    spec = write_spec(tmp_path, text or small_di(steps=8))
    result = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r"), "-q",
                                 "--no-report"])
    audit = audit_run(tmp_path / "r")
    assert audit.ok and audit.stall is not None, (audit.problems, result.output, result.exception)
    return audit.stall, " ".join(result.output.split())


def test_no_loss_decrease_says_lower_the_learning_rate(tmp_path, monkeypatch):
    """Armijo finds no decrease along any certified step (the lr 1e-2 run of the issue: the
    metrics far from their bounds, g ≈ −3): the hint is the learning rate, not the solver."""
    monkeypatch.setattr(Trainer, "backtrack",
                        lambda self, theta, direction, loss0, slope: (None, loss0 + 1.0))
    stall, summary = stalled_run(tmp_path)
    assert stall["cause"] == "loss" and stall["causes"] == {"loss": 8}
    assert stall["rejected_in_a_row"] == 8 and stall["worst_g"] < 0
    assert "the loss did not decrease" in summary and "lower the optimizer's `lr`" in summary
    # small_di's spectral-radius bound: its slack (g ≈ −0.06) is what each certified step used
    assert stall["bound_by"] == "margin" and "'margin' used up its slack" in summary
    assert SOLVER_HINT not in summary and "smoothness" not in summary


def test_no_loss_decrease_far_from_every_bound_is_the_learning_rate_alone(tmp_path,
                                                                         monkeypatch):
    """The issue's run: g ≈ −3 and −17, no constraint near its bound, and still no step lowered
    the loss: no certified step used up a metric's slack, so the hint names lr only."""
    monkeypatch.setattr(Trainer, "backtrack",
                        lambda self, theta, direction, loss0, slope: (None, loss0 + 1.0))
    text = (small_di(steps=6).replace("abs(position) <= 1.5", "abs(position) <= 20")
            .replace("force in [-4, 4]", "force in [-40, 40]")
            .replace("spectral_radius <= 0.98", "spectral_radius <= 3")
            .replace("lr = 0.05", "lr = 1e-4"))  # a raw step far inside every certified bound
    stall, summary = stalled_run(tmp_path, text)
    assert stall["cause"] == "loss" and stall["bound_by"] is None and stall["worst_g"] < -1
    assert "did not shape these steps" in summary and "lower the optimizer's `lr`" in summary
    assert "directions" not in summary and SOLVER_HINT not in summary


def test_rollouts_within_the_bound_but_not_the_margin_say_margin(tmp_path, monkeypatch):
    """Every verification by rollout puts force_limit at −margin/2: safe (g ≤ 0) but not by the
    margin, so each step is refuted until its tries run out."""
    real, calls = Trainer.metrics, []

    def within_margin(self, thetas):
        g = real(self, thetas)
        if thetas.shape[0] == 1:
            calls.append(1)
            if len(calls) > 1:  # θ₀'s own evaluation stays as it is
                g[0, 1] = -self.margins[1] / 2
        return g
    monkeypatch.setattr(Trainer, "metrics", within_margin)
    stall, summary = stalled_run(tmp_path)
    assert stall["cause"] == "margin" and stall["metric"] == "force_limit"
    assert stall["margin"] == pytest.approx(1e-6)
    assert "stayed within its bound by rollout (g ≤ 0) but not by its margin 1e-06" in summary
    assert "lower that metric's `margin`" in summary and SOLVER_HINT not in summary


def test_rollouts_beyond_the_certified_bound_say_raise_ell(tmp_path, monkeypatch):
    """Every verification by rollout breaks force_limit (g > 0): the certificate's ℓ is too
    small there."""
    real, calls = Trainer.metrics, []

    def violated(self, thetas):
        g = real(self, thetas)
        if thetas.shape[0] == 1:
            calls.append(1)
            if len(calls) > 1:
                g[0, 1] = 0.5
        return g
    monkeypatch.setattr(Trainer, "metrics", violated)
    stall, summary = stalled_run(tmp_path)
    assert stall["cause"] == "certificate" and stall["metric"] == "force_limit"
    assert "'force_limit' blocked training" in summary and "Raise its `smoothness` ℓ" in summary
    assert "`lr`" not in summary and SOLVER_HINT not in summary


def test_a_solver_without_answers_says_constraints_or_solver(tmp_path, monkeypatch):
    from scpo_spec.compile.projection import ProjectionTemplate, Solution
    monkeypatch.setattr(ProjectionTemplate, "solve",
                        lambda self, *a: Solution("infeasible", None, 0.0, None))
    stall, summary = stalled_run(tmp_path)
    assert stall["cause"] == "solver" and stall["reason"] == "solver: infeasible"
    assert SOLVER_HINT in summary and "another `solver`" in summary and "`lr`" not in summary


def test_the_advice_follows_the_cause_most_steps_share():
    """Hand-made: 6 steps without loss decrease, 2 refuted: the lr advice, with the mix named."""
    stall = {"kind": "rejected", "metric": "force_limit", "cause": "loss",
             "causes": {"loss": 6, "certificate": 2}, "rejected_in_a_row": 8, "from_step": 3,
             "ell_growth": None, "margin": 1e-6, "worst_g": -3.0, "scenario": None,
             "bound_by": None, "reason": None}
    text = describe_stall(stall)
    assert text.startswith("stalled: 8 updates rejected in a row from step 3")
    assert "g ≤ -3" in text and "`lr`" in text
    assert "no loss decrease along the certified step: 6" in text
    assert "refuted by rollout beyond the bound: 2" in text
    # a stall dict from before `cause` existed reads as it did
    old = {k: v for k, v in stall.items() if k not in ("cause", "causes")}
    assert "Raise its `smoothness` ℓ" in describe_stall(old)
    assert SOLVER_HINT in describe_stall({**old, "metric": None, "reason": "solver: x"})


def test_the_report_shows_the_same_advice(tmp_path, monkeypatch):
    from scpo_spec.report import gather
    monkeypatch.setattr(Trainer, "backtrack",
                        lambda self, theta, direction, loss0, slope: (None, loss0 + 1.0))
    stalled_run(tmp_path)
    assert "lower the optimizer's `lr`" in gather(tmp_path / "r").stall_text
