"""A plant the LQR cannot handle, or that fails mid-rollout, is a located message, never garbage
or a traceback: `check` refuses a linearisation point that is not an equilibrium and a Riccati
equation without a stabilising solution at the backup's line; a `system python` plant that
raises or leaves the finite numbers is named with its step and scenario by `check --rollout`
and `train` (exit 2), and a training it stops leaves a run marked as interrupted."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.compile.problem import compile_spec
from scpo_spec.compile.usercode import check_code
from scpo_spec.language.load import check_text
from scpo_spec.policies.backup import BackupError
from tests.engine_specs import small_di

runner = CliRunner()
HINT = "equilibrium { force = 9.81 }"

LINEAR_SYSTEM = """\
system linear {
    state position, velocity
    input force
    A = [[1, dt], [0, 1]]
    B = [[0.5 * dt^2], [dt]]
}"""


def with_system(system: str, text: str | None = None) -> str:
    text = small_di(steps=3) if text is None else text
    assert LINEAR_SYSTEM in text
    return text.replace(LINEAR_SYSTEM, system)


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    return result


def errors(text: str, tmp_path: Path) -> list[tuple[int, int, str, str | None]]:
    result = check_text(text, path=str(tmp_path / "spec.scpo"), base_dir=tmp_path)
    return [(d.span.line, d.span.column, d.message, d.hint) for d in result.diagnostics
            if d.severity == "error"]


# ---- the linearisation point of declared plants (language checks) ----
QUADROTOR = """\
system ode {
    state position, velocity
    input force
    dt = 0.1
    der position = velocity
    der velocity = force - 9.81
}"""  # raw thrust: hovering needs force = 9.81, so the origin is no equilibrium


def test_an_ode_plant_off_equilibrium_is_refused_at_the_backup_and_spectral_radius(tmp_path):
    found = errors(with_system(QUADROTOR), tmp_path)
    assert [(line, col) for line, col, _, _ in found] == [(10, 1), (22, 19)]
    (_, _, lqr, hint), (_, _, rho, _) = found
    assert lqr == ("the lqr backup linearises the plant at x = 0, u = 0, which is not an "
                   "equilibrium of this plant: ẋ = f(0, 0) = [0, -9.81]")
    assert rho.startswith("spectral_radius linearises the plant at x = 0, u = 0")
    assert HINT in hint and "deviations from an operating point" in hint


def test_the_cli_check_names_the_backup_line_with_the_residual(tmp_path):
    spec = tmp_path / "quad.scpo"
    spec.write_text(with_system(QUADROTOR))
    result = run("check", spec)
    assert result.exit_code == 1
    assert f"{spec}:10:1: error: the lqr backup linearises the plant at x = 0, u = 0" \
        in result.output
    assert "[0, -9.81]" in result.output and "✗" in result.output


def test_a_discrete_plant_with_a_braking_lead_is_refused(tmp_path):
    braking = """\
system discrete {
    state position, velocity
    input force
    next position = position + dt * velocity
    next velocity = velocity + dt * (force - 2)
}"""
    (lqr, _rho) = errors(with_system(braking), tmp_path)
    assert lqr[:2] == (9, 1)
    assert lqr[2].endswith("x⁺ = F(0, 0) = [0, -0.2]")


def test_a_plant_at_rest_at_the_origin_passes(tmp_path):
    at_rest = QUADROTOR.replace("force - 9.81", "force - 9.81 * sin(position)")
    assert errors(with_system(at_rest), tmp_path) == []


def test_without_a_linearisation_the_origin_need_not_be_an_equilibrium(tmp_path):
    text = with_system(QUADROTOR).replace("backup lqr { Q = diag(1, 1)  R = diag(1) }",
                                          "backup linear { K = [[-1, -2]] }")
    text = text.replace("stability margin: spectral_radius <= 0.98", "constraint speed: "
                        "always abs(velocity) <= 50")
    assert errors(text, tmp_path) == []


# ---- a Riccati equation without a stabilising solution ----
UNSTABILISABLE = LINEAR_SYSTEM.replace("A = [[1, dt], [0, 1]]", "A = [[1.1, 0], [0, 1]]").replace(
    "B = [[0.5 * dt^2], [dt]]", "B = [[0], [1]]")  # the position's mode 1.1 has no input


def test_an_unstabilisable_plant_is_located_at_the_lqr_backup(tmp_path):
    ((line, col, message, hint),) = errors(with_system(UNSTABILISABLE), tmp_path)
    assert (line, col) == (9, 1)
    assert message.startswith("the lqr backup's Riccati equation has no stabilising solution "
                              "for the plant linearised at x = 0, u = 0")
    assert hint.startswith("(A, B) is not stabilisable: the mode λ = 1.1 of A (|λ| ≥ 1) cannot "
                           "be moved by the inputs")


def test_compile_locates_the_riccati_failure_too(tmp_path):
    """A model that skipped the checks (as load_run's re-check would not): the BackupError
    names the backup's line rather than only scipy's words."""
    text = small_di(steps=3)
    spec = check_text(text, path=str(tmp_path / "spec.scpo"), base_dir=tmp_path).spec
    spec.system.A.value = [[1.1, 0.0], [0.0, 1.0]]
    spec.system.B.value = [[0.0], [1.0]]
    with pytest.raises(BackupError) as caught:
        compile_spec(spec, tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'spec.scpo'}:9:1: the lqr backup's "
                                        "Riccati equation has no stabilising solution")
    assert "not stabilisable: the mode λ = 1.1" in str(caught.value)


# ---- python plants: the same checks, by running the author's code ----
def python_spec(tmp_path: Path, module: str, code: str, text: str | None = None) -> Path:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(code), encoding="utf-8")
    spec = tmp_path / "spec.scpo"
    spec.write_text(with_system(f'system python "{module}:dynamics" '
                                "{ state position, velocity  input force }", text))
    return spec


GRAVITY = """\
import torch
DT = 0.1

def dynamics(x, u):
    p, v, f = x[..., 0], x[..., 1], u[..., 0]
    return torch.stack((p + DT * v, v + DT * (f - 9.81)), dim=-1)
"""


def test_a_python_plant_off_equilibrium_is_refused_by_check(tmp_path):
    spec = python_spec(tmp_path, "plant_gravity", GRAVITY)
    model = check_text(spec.read_text(), path=str(spec), base_dir=tmp_path).spec
    lqr, rho = check_code(model, tmp_path)
    assert (lqr.span.line, lqr.span.column, rho.span.line, rho.span.column) == (4, 1, 16, 19)
    assert lqr.message.endswith("not an equilibrium of this plant: x⁺ = F(0, 0) = [0, -0.981]")
    assert HINT in lqr.hint
    result = run("check", spec)
    assert result.exit_code == 1 and f"{spec}:4:1: error: the lqr backup linearises" \
        in result.output


def test_an_unstabilisable_python_plant_is_located_at_the_backup(tmp_path):
    frozen = GRAVITY.replace("v + DT * (f - 9.81)", "1.1 * v").replace("p + DT * v",
                                                                         "p + DT * f")
    spec = python_spec(tmp_path, "plant_frozen", frozen)
    model = check_text(spec.read_text(), path=str(spec), base_dir=tmp_path).spec
    (d,) = check_code(model, tmp_path)
    assert (d.span.line, d.span.column) == (4, 1)
    assert "Riccati equation has no stabilising solution" in d.message
    assert "the mode λ = 1.1 of A" in d.hint


# ---- a python plant that fails mid-rollout ----
BANDED = """\
import torch
DT = 0.1
MODE = "{mode}"

def dynamics(x, u):
    p, v, f = x[..., 0], x[..., 1], u[..., 0]
    band = (p > 3) & (p < 4)  # never reached by check's probe; crossed on the way to 0
    if MODE == "raise" and band.any():
        raise ValueError("no tyre model between 3 and 4 m")
    nxt = torch.stack((p + DT * v + 0.5 * DT ** 2 * f, v + DT * f), dim=-1)
    return torch.where(band[..., None], torch.nan, nxt) if MODE == "nan" else nxt
"""


def banded_spec(tmp_path: Path, mode: str, module: str) -> Path:
    text = small_di(steps=3).replace("initial position in [-1, 1]", "initial position in [5, 6]")
    text = text.replace("abs(position) <= 1.5", "abs(position) <= 10")
    text = text.replace("force in [-4, 4]", "force in [-40, 40]")
    return python_spec(tmp_path, module, BANDED.format(mode=mode), text)


AT = "at step 8 of scenario 1, which starts at x₀ = [5.04097, -0.483472] (x = [3.83727, " \
     "-2.02446], u = [-0.207872])"


@pytest.mark.parametrize("mode, what", [
    ("raise", "raised ValueError: no tyre model between 3 and 4 m"),
    ("nan", "returned a non-finite x⁺ = [nan, nan]"),
])
def test_check_rollout_names_the_module_step_and_scenario(tmp_path, mode, what):
    spec = banded_spec(tmp_path, mode, f"plant_band_{mode}")
    result = run("check", spec, "--rollout")
    assert result.exit_code == 2, result.output
    assert f"error: {spec}:3:15: the plant 'plant_band_{mode}:dynamics' {what} {AT}" \
        in " ".join(result.output.split()), result.output


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_train_refuses_before_any_run_exists(tmp_path, mode):
    spec = banded_spec(tmp_path, mode, f"plant_band_{mode}_train")
    out = tmp_path / "run"
    result = run("train", spec, "--out", out, "--no-report", "--quiet")
    assert result.exit_code == 2, result.output
    assert f"the plant 'plant_band_{mode}_train:dynamics'" in result.output
    assert "at step 8 of scenario 1" in " ".join(result.output.split())
    assert not out.exists()


TRIPWIRE = """\
import torch
DT = 0.1
ARMED = [False]

def dynamics(x, u):
    # fails once training evaluates its first bank of candidates (C > 1 on the 8 scenarios)
    if x.dim() == 3 and x.shape[0] > 1 and x.shape[1] == 8:
        ARMED[0] = True
    p, v, f = x[..., 0], x[..., 1], u[..., 0]
    if ARMED[0] and (p > 0).any():
        raise RuntimeError("friction table lookup failed")
    return torch.stack((p + DT * v + 0.5 * DT ** 2 * f, v + DT * f), dim=-1)
"""


def test_a_plant_failing_mid_training_leaves_a_run_marked_interrupted(tmp_path):
    spec = python_spec(tmp_path, "plant_tripwire", TRIPWIRE)
    out = tmp_path / "run"
    result = run("train", spec, "--out", out, "--no-report", "--quiet")
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert (f"error: {spec}:3:15: the plant 'plant_tripwire:dynamics' raised RuntimeError: "
            "friction table lookup failed at step 0 of scenario 0 (candidate policy 0 of 6)"
            in said), result.output
    assert f"the run {out} is kept up to step 0 and marked interrupted" in said
    records = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert records[-1]["type"] == "end"
    assert records[-1]["reason"].startswith("interrupted after step 0: the plant "
                                            "'plant_tripwire:dynamics' raised RuntimeError")
    audit = run("audit", out)
    assert audit.exit_code == 1 and "audit FAILED" in audit.output  # not a run that passes
