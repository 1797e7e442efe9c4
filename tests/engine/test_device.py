"""`train { device cpu|cuda }` and `scpo train --device`: the language entry (fmt, YAML), the
refusal without a GPU (a located check error), and a device-clean hot path (no tensor created
on the CPU by hand where the rollout runs: checked on torch's `meta` device, where mixing a
CPU tensor in fails loudly)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from scpo_spec.cli import app
from scpo_spec.compile.problem import compile_spec
from scpo_spec.compile.usercode import check_code
from scpo_spec.language.load import check_text, load_spec
from tests.language.test_forms_plants_and_code import round_trip

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "double_integrator.scpo"
NO_GPU = not torch.cuda.is_available()


def with_device(device: str) -> str:
    return SPEC.read_text().replace("    solver clarabel\n",
                                    f"    solver clarabel\n    device {device}\n")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_device_entry_survives_fmt_and_yaml(device):
    round_trip(with_device(device))


def test_an_unknown_device_is_a_located_error():
    diags = check_text(with_device("tpu"), path="t.scpo").diagnostics
    assert any("tpu" in d.message and d.span is not None for d in diags), \
        [d.headline() for d in diags]


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_where_it_is_written(tmp_path):
    path = tmp_path / "t.scpo"
    path.write_text(with_device("cuda"))
    spec = load_spec(path)
    (diag,) = check_code(spec, tmp_path)
    assert diag.message.startswith("`device cuda`, but this machine has no usable CUDA GPU")
    assert diag.span.line == path.read_text().splitlines().index("    device cuda") + 1
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 1 and "no usable CUDA GPU" in result.output


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_train_device_cuda_without_a_gpu_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["train", str(SPEC), "--device", "cuda",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--device cuda, but this machine has no usable CUDA GPU" \
        in result.output
    assert not (tmp_path / "run").exists()


def test_device_cpu_is_the_default_and_changes_no_number():
    spec = load_spec(SPEC)
    c = compile_spec(spec, SPEC.parent)
    assert c.settings.device == "cpu" and c.evaluator.device == torch.device("cpu")
    path = SPEC  # the same spec with `device cpu` written out
    explicit = compile_spec(load_spec_text(with_device("cpu"), path), path.parent)
    assert explicit.settings.device == "cpu"
    thetas = c.family.theta0[None].repeat(3, 1)
    thetas[1:] += 1e-3
    assert torch.equal(c.evaluator(thetas), explicit.evaluator(thetas))


def load_spec_text(text: str, path: Path):
    result = check_text(text, path=str(path))
    assert result.ok, [d.headline() for d in result.diagnostics]
    return result.spec


@pytest.mark.parametrize("name", ["double_integrator.scpo", "pendulum.scpo", "cartpole.scpo",
                                  "bicycle_lane.scpo"])
def test_the_rollout_is_device_clean(name):
    """On the meta device every op only propagates shapes, and one that mixes in a CPU tensor
    (a constant created without a device) raises: the rollout, the policy and the plant run
    wherever θ and x0 are."""
    path = ROOT / "specs" / name
    c = compile_spec(load_spec(path), path.parent)
    ev = c.evaluator
    ev.device = torch.device("meta")
    thetas = c.family.theta0[None].repeat(2, 1)
    for reuse in (False, True, True):  # fresh tensors, then the evaluator's kept buffers
        with torch.no_grad():
            X, U = ev._rollout_on_device(thetas, ev.x0, reuse=reuse)
        assert X.device.type == "meta"
        assert X.shape == (2, ev.x0.shape[0], ev.horizon + 1, c.family.n)
        assert U.shape == (2, ev.x0.shape[0], ev.horizon, c.family.m)


# ---- on a CUDA GPU (skipped here; run where one is lent: benchmarks/gpu_check.sh) ----

@pytest.mark.skipif(NO_GPU, reason="no CUDA GPU")
@pytest.mark.parametrize("name", ["double_integrator.scpo", "pendulum.scpo", "cartpole.scpo",
                                  "bicycle_lane.scpo"])
def test_cuda_metrics_agree_with_the_cpu(name):
    """The same candidates rolled out on the GPU and on the CPU, both float64: the metrics agree
    to 1e-12 (GPU BLAS sums in another order, so not bit for bit), and both come back on the
    CPU as float64."""
    path = ROOT / "specs" / name
    cpu = compile_spec(load_spec(path), path.parent)
    gpu = compile_spec(load_spec(path), path.parent)
    gpu.evaluator.device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    thetas = cpu.family.theta0[None] + 1e-3 * torch.randn(
        8, cpu.family.d, generator=gen, dtype=torch.float64)
    a, b = cpu.evaluator(thetas), gpu.evaluator(thetas)
    assert b.device.type == "cpu" and b.dtype == torch.float64
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), (a - b).abs().max()


@pytest.mark.skipif(NO_GPU, reason="no CUDA GPU")
def test_train_device_cuda_certifies_and_audits(tmp_path):
    """`scpo train --device cuda` end to end: CERTIFIED, and `scpo audit` (numpy, no GPU)
    recomputes every certificate from the log."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(SPEC), "--device", "cuda", "--out", str(out),
                                      "--no-tensorboard"])
    assert result.exit_code == 0 and "CERTIFIED" in result.output, result.output
    audit = CliRunner().invoke(app, ["audit", str(out)])
    assert audit.exit_code == 0, audit.output
