"""`scpo verify` over frozen backups whose network is a feed-forward MLP: a TorchScript
`nn.Sequential` (read by policy torch's reader, bounded layer by layer like an ONNX backup's
network) and a gain backup that declares its own `observe`.  Against sampling: every sampled
trajectory inside the reach sets, every sampled g inside its bound, PROVED bounds above the
sampled worst."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from scpo_spec.compile.problem import compile_spec
from scpo_spec.dtype import DTYPE
from scpo_spec.language.load import check_text
from scpo_spec.verify.prove import verify
from scpo_spec.verify.reach import backup_network
from tests.test_operating_point import _enclosed, gravity
from tests.test_torch_policies import lqr_gain, with_backup
from tests.test_verify import _box, _check_enclosed, _sample


def _save(net: nn.Module, path) -> None:
    torch.jit.script(net.to(DTYPE).eval()).save(str(path))


def _saturated_lqr(K: np.ndarray, seed: int) -> nn.Sequential:
    """u ≈ 3.5 tanh(K x / 3.5) plus three small random tanh neurons: a safe, stabilising,
    nonlinear backup for small_di."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).to(DTYPE)
    with torch.no_grad():
        net[0].weight.copy_(torch.cat([torch.as_tensor(K / 3.5),
                                       0.3 * torch.randn(3, 2, generator=gen, dtype=DTYPE)]))
        net[0].bias.copy_(torch.cat([torch.zeros(1, dtype=DTYPE),
                                     0.1 * torch.randn(3, generator=gen, dtype=DTYPE)]))
        net[2].weight.copy_(torch.cat([torch.tensor([3.5], dtype=DTYPE),
                                       0.05 * torch.randn(3, generator=gen, dtype=DTYPE)])[None])
        net[2].bias.copy_(-(net[2].weight[0, 1:] * torch.tanh(net[0].bias[1:])).sum()[None])
    return net


def _perturbed(theta: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return theta + scale * torch.randn(theta.shape, generator=gen, dtype=DTYPE)


def test_a_torchscript_sequential_backup_is_enclosed_and_proved(tmp_path):
    torch.set_num_threads(1)
    net = _saturated_lqr(lqr_gain(tmp_path), 0)
    _save(net, tmp_path / "ctrl.pt")
    compiled = compile_spec(with_backup(tmp_path), tmp_path)
    layers, activations = backup_network(compiled.backup)
    assert activations == ["tanh", "identity"] and layers[0][0].shape == (4, 2)
    theta = _perturbed(compiled.family.theta0, 0.05, 1)
    lo, hi = _box(compiled)
    _check_enclosed(compiled, theta, lo, hi, 10_000)
    result = verify(compiled, theta, cells=64, time_limit=120)
    assert result.verdict == "PROVED", result.as_json()
    x0 = _sample(lo, hi, 10_000, 3)
    with torch.no_grad():
        g = compiled.evaluator.per_scenario(theta[None], x0)[0]
    for j, (name, r) in enumerate(result.constraints.items()):
        assert g[:, j].max() <= r.bound <= -r.margin, name


@pytest.mark.parametrize("net", [
    nn.Sequential(nn.Linear(2, 5, bias=False), nn.LeakyReLU(0.1), nn.Linear(5, 5, bias=False),
                  nn.ELU(alpha=0.5), nn.Linear(5, 1, bias=False)),
    nn.Sequential(nn.Linear(2, 6), nn.Softplus(), nn.Linear(6, 1), nn.Tanh()),
    nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Identity(), nn.Linear(3, 3), nn.ReLU(),
                  nn.Linear(3, 1))],
    ids=["no-bias-leaky-elu", "softplus-last-tanh", "sigmoid-relu"])
def test_torchscript_backups_of_each_activation_are_enclosed(tmp_path, net):
    torch.set_num_threads(1)
    torch.manual_seed(5)
    net = net.to(DTYPE)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    _save(net, tmp_path / "ctrl.pt")
    compiled = compile_spec(with_backup(tmp_path), tmp_path)
    theta = _perturbed(compiled.family.theta0, 0.05, 2)
    _check_enclosed(compiled, theta, *_box(compiled), 10_000)


def test_a_torchscript_backup_around_u_star_with_its_observation_and_scale_is_enclosed(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(7)
    _save(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)), tmp_path / "b.pt")
    text = gravity('torch { file = "b.pt"  observe = [p - 1, v, p * v]  output_scale = [3] }',
                   "mlp { hidden = [5]  residual = backup  seed = 0  observe = [p - 1, v] }",
                   lyapunov=False)
    path = tmp_path / "t.scpo"
    path.write_text(text)
    result = check_text(text, path=str(path), base_dir=tmp_path)
    assert result.ok, [d.headline() for d in result.diagnostics]
    compiled = compile_spec(result.spec, tmp_path)
    _enclosed(compiled, _perturbed(compiled.family.theta0, 0.2, 3))


def test_a_gain_backup_that_declares_its_observation_is_enclosed():
    torch.set_num_threads(1)
    result = check_text(gravity(
        "linear { K = [[-2, -3, 0.5]]  k = [0.1]  observe = [p - 1, v, p * v]  "
        "output_scale = [0.7] }",
        "mlp { hidden = [6]  residual = backup  seed = 0 }", lyapunov=False), path="g.scpo")
    assert result.ok, [d.headline() for d in result.diagnostics]
    compiled = compile_spec(result.spec)
    assert compiled.backup.module is not None  # a module: frozen, with its own observation
    layers, activations = backup_network(compiled.backup)
    assert activations == ["identity"]
    np.testing.assert_array_equal(layers[0][0].numpy(), [[-2, -3, 0.5]])
    _enclosed(compiled, _perturbed(compiled.family.theta0, 0.2, 4))


def test_a_torchscript_backup_that_is_no_mlp_is_undecided_with_the_reason(tmp_path):
    _save(nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 1)), tmp_path / "ctrl.pt")
    compiled = compile_spec(with_backup(tmp_path), tmp_path)
    result = verify(compiled, compiled.family.theta0, cells=4)
    assert result.verdict == "UNDECIDED" and "gelu" in result.reason
