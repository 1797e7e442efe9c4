"""`backup torch { file }` and `policy torch { file }` (issue 11): real TorchScript files saved into
tmp_path, loaded as the engine loads them.  The parser reads these forms on the language branch;
here the models are built directly (a checked small spec whose backup/policy is replaced)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from scpo_spec.audit.verify import audit_run
from scpo_spec.compile.problem import compile_spec
from scpo_spec.engine.run import train
from scpo_spec.language.model import Text, TorchBackup, TorchPolicy
from scpo_spec.language.source import Span
from scpo_spec.policies.backup import make_backup
from scpo_spec.policies.torch_file import TorchFileError, check_files
from scpo_spec.report.evidence import gather
from tests.engine_specs import small_di, spec_of
from tests.numerics import assert_close_across_paths

D = torch.float64
SPAN = Span(file="spec.scpo", line=9, column=22, end_line=9, end_column=34)
# the LQR gain of small_di's plant (Q = I, R = 1): a safe, stabilising backup
K_LQR = None


def lqr_gain(tmp_path) -> np.ndarray:
    global K_LQR
    if K_LQR is None:
        c = compile_spec(spec_of(small_di(), tmp_path), tmp_path)
        K_LQR = c.backup.K.copy()
    return K_LQR


class Saturated(nn.Module):
    """u = 3.5 tanh(K x / 3.5): nonlinear, bounded, with Jacobian K at the origin."""

    def __init__(self, K: np.ndarray):
        super().__init__()
        self.register_buffer("K", torch.as_tensor(K, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.5 * torch.tanh(x @ self.K.T.to(x.dtype) / 3.5)


class WrongWidth(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], x[:, :1]], dim=1)  # (N, 2): the plant has one input


class NotFinite(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x[:, :1] - 10.0)  # NaN for every state near the origin


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) + x[:, :1]


def save(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def with_backup(tmp_path, name="ctrl.pt", text=None):
    spec = spec_of(text or small_di(), tmp_path)
    spec.backup = TorchBackup(file=Text(value=name, span=SPAN), span=SPAN)
    return spec


def with_policy(tmp_path, name="policy.pt", text=None):
    spec = spec_of(text or small_di(), tmp_path)
    spec.policy = TorchPolicy(file=Text(value=name, span=SPAN), span=SPAN)
    return spec


# ---- backup torch ----
def test_first_policy_is_exactly_the_torch_backup(tmp_path):
    K = lqr_gain(tmp_path)
    scripted = torch.jit.script(Saturated(K))
    torch.jit.save(scripted, str(tmp_path / "ctrl.pt"))
    c = compile_spec(with_backup(tmp_path), tmp_path)
    assert c.backup.module is not None and c.backup.P is None
    assert all(not p.requires_grad for p in c.backup.module.parameters())
    # K: the module's Jacobian at the origin, by autograd (≈ the LQR gain it was built from)
    np.testing.assert_allclose(c.backup.K, K, rtol=1e-6)
    fam = c.family
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 2, generator=g, dtype=D)
    thetas = fam.theta0.expand(3, -1).clone()
    expected = scripted.to(D)(x.reshape(-1, 2)).reshape(3, 17, 1)
    assert torch.equal(fam.forward(thetas, x), expected)           # batched: exactly the backup
    # the single-policy module: the backup on 17 states, not 51, so to the last bits
    assert_close_across_paths(fam.module()(x[0]), expected[0])
    assert_close_across_paths(fam.module()(x[0].numpy()), expected[0])
    assert fam.module()(x[0, 0]).shape == (1,)
    # a perturbed θ: u = backup(x) + net_θ(x), the same in the batched and the module views
    thetas = thetas + 0.1 * torch.randn(thetas.shape, generator=g, dtype=D)
    batched = fam.forward(thetas, x)
    for i in range(3):
        torch.testing.assert_close(batched[i], fam.module(thetas[i])(x[i]), rtol=0, atol=1e-13)
    assert not torch.allclose(batched, expected)
    # the policy's Jacobian at the origin includes the backup's (spectral_radius reads it)
    J = fam.jacobian_at_origin(fam.theta0[None])[0].numpy()
    np.testing.assert_array_equal(J, c.backup.K)


def test_backup_torch_trains_and_stays_certified(tmp_path):
    save(Saturated(lqr_gain(tmp_path)), tmp_path / "ctrl.pt")
    text = small_di(steps=4)
    spec = with_backup(tmp_path, text=text)
    res = train(tmp_path / "spec.scpo", spec, text, out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.ok and a.accepted_violations == 0 and a.steps == 4 and a.accepted >= 1
    assert a.loss_last < a.loss_first
    assert all(v <= -1e-6 for v in a.worst.values())
    ev = gather(res.run_dir, compute_holdout=False, final_policy=False)
    assert ev.certified, ev.failures


def test_backup_identity(tmp_path):
    path = save(Saturated(lqr_gain(tmp_path)), tmp_path / "ctrl.pt")
    import hashlib

    from scpo_spec.plan.code import identities
    assert identities(with_backup(tmp_path), tmp_path) == [
        {"kind": "backup torch", "target": "ctrl.pt", "file": str(path.resolve()),
         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]


def _one_error(spec, base) -> str:
    diags = check_files(spec, base)
    assert len(diags) == 1 and diags[0].severity == "error"
    assert diags[0].span == SPAN  # located at the `file = "…"` string
    return diags[0].message


def test_check_errors_for_a_backup_file(tmp_path):
    spec = with_backup(tmp_path)
    assert "not found" in _one_error(spec, tmp_path)
    (tmp_path / "ctrl.pt").write_bytes(b"this is no zip archive")
    msg = _one_error(spec, tmp_path)
    assert "is not a TorchScript archive" in msg and "\n" not in msg
    torch.save({"K": torch.zeros(1, 2)}, str(tmp_path / "ctrl.pt"))  # a pickle, not TorchScript
    assert "is not a TorchScript archive" in _one_error(spec, tmp_path)
    save(WrongWidth(), tmp_path / "ctrl.pt")
    assert "to (4, 2); the spec's inputs need (4, 1)" in _one_error(spec, tmp_path)
    save(NotFinite(), tmp_path / "ctrl.pt")
    assert "non-finite" in _one_error(spec, tmp_path)
    save(nn.Linear(3, 1), tmp_path / "ctrl.pt")  # expects 3 states; the plant has 2
    msg = _one_error(spec, tmp_path)
    assert "fails on a (4, 2) float64 batch of states: RuntimeError: mat1 and mat2" in msg, msg
    save(Saturated(lqr_gain(tmp_path)), tmp_path / "ctrl.pt")
    assert check_files(spec, tmp_path) == []
    # the compiler refuses a bad file the same way, as an error a user can cause
    save(WrongWidth(), tmp_path / "ctrl.pt")
    with pytest.raises(TorchFileError, match="spec.scpo:9:22: backup file 'ctrl.pt' maps"):
        compile_spec(spec, tmp_path)


def test_backup_path_is_relative_to_the_spec_directory(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    save(Saturated(lqr_gain(tmp_path)), tmp_path / "sub" / "ctrl.pt")
    spec = with_backup(tmp_path, name="sub/ctrl.pt")
    monkeypatch.chdir(tmp_path / "sub")  # the working directory does not matter
    assert check_files(spec, tmp_path) == []
    dyn = compile_spec(spec, tmp_path).dynamics
    assert make_backup(spec, dyn, tmp_path).module is not None


# ---- policy torch ----
@pytest.mark.parametrize("layers", [
    lambda: nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1)),
    lambda: nn.Sequential(nn.Linear(2, 5, bias=False), nn.ReLU(), nn.Linear(5, 1, bias=False)),
    lambda: nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Identity(), nn.Linear(4, 1)),
    lambda: nn.Linear(2, 1),
])
def test_policy_torch_maps_exactly_onto_the_mlp_family(tmp_path, layers):
    torch.manual_seed(3)
    net = layers()  # float32, as most files are saved
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(tmp_path / "policy.pt"))
    spec = with_policy(tmp_path)
    assert check_files(spec, tmp_path) == []
    fam = compile_spec(spec, tmp_path).family
    expected_theta = torch.cat([p.detach().double().reshape(-1) for p in net.parameters()])
    assert torch.equal(fam.theta0, expected_theta)       # θ₀: the file's parameters, in order
    ref = scripted.double()
    x = torch.randn(4, 33, 2, dtype=D)
    out = fam.forward(fam.theta0.expand(4, -1).clone(), x)
    torch.testing.assert_close(out, ref(x.reshape(-1, 2)).reshape(4, 33, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(fam.module()(x[1]), ref(x[1]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("module, why", [
    (Custom(), "it is a 'Custom'"),
    (nn.Sequential(nn.Linear(2, 4), nn.Dropout(), nn.Linear(4, 1)), "'Dropout'"),
    (nn.Sequential(nn.Linear(2, 4), nn.Softplus(beta=2.0), nn.Linear(4, 1)), "beta=2.0"),
    (nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.ReLU(), nn.Linear(4, 1)),
     "does not follow an nn.Linear"),
])
def test_policy_torch_refuses_what_it_cannot_evaluate_in_batch(tmp_path, module, why):
    save(module, tmp_path / "policy.pt")
    spec = with_policy(tmp_path)
    msg = _one_error(spec, tmp_path)
    assert "is not a structure scpo can train" in msg and why in msg
    assert "supported: an nn.Sequential of nn.Linear layers" in msg
    assert check_files(spec, tmp_path)[0].hint
    with pytest.raises(TorchFileError, match="not a structure"):
        compile_spec(spec, tmp_path)


@pytest.mark.parametrize("net", [
    nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)),
    nn.Sequential(nn.Linear(2, 4), nn.LeakyReLU(0.1), nn.Linear(4, 1), nn.Tanh()),
    nn.Sequential(nn.Linear(2, 4), nn.ELU(alpha=0.5), nn.Linear(4, 4), nn.Linear(4, 1)),
], ids=["tanh-relu", "leaky-then-tanh-after-the-last", "elu0.5-linear-linear"])
def test_policy_torch_per_layer_activations(tmp_path, net):
    """LANGUAGE-v3: a `policy torch` family has per-layer activations (mixed, one after the
    last layer, parametrised LeakyReLU/ELU): batched forward, module and Jacobian = the file."""
    torch.manual_seed(3)
    net = net.double()
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(tmp_path / "policy.pt"))
    spec = with_policy(tmp_path)
    assert check_files(spec, tmp_path) == []
    fam = compile_spec(spec, tmp_path).family
    x = torch.randn(3, 17, 2, dtype=D)
    thetas = fam.theta0.expand(3, -1).clone()
    with torch.no_grad():
        expected = net(x.reshape(-1, 2)).reshape(3, 17, 1)
        torch.testing.assert_close(fam.forward(thetas, x), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(fam.batched(thetas)(x), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(fam.module()(x[1]), expected[1], rtol=0, atol=1e-12)
    J = torch.autograd.functional.jacobian(lambda z: net(z)[0], torch.zeros(1, 2, dtype=D))
    torch.testing.assert_close(fam.jacobian_at_origin(thetas)[0], J[:, 0, :], rtol=0,
                               atol=1e-12)


def test_policy_torch_trains(tmp_path):
    net = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():  # start at a safe policy: the LQR gain (the spec's θ₀ must be safe)
        net[0].weight.copy_(torch.as_tensor(lqr_gain(tmp_path)))
        net[0].bias.zero_()
    save(net, tmp_path / "policy.pt")
    # the run's header keeps the text, which the audit holds the header to: the text must be
    # the spec trained
    text = small_di(steps=3).replace(
        "policy mlp { hidden = [8]  activation = tanh  residual = backup  seed = 0 }",
        'policy torch { file "policy.pt" }')
    spec = spec_of(text, tmp_path)
    assert isinstance(spec.policy, TorchPolicy)
    res = train(tmp_path / "spec.scpo", spec, text, out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.ok and a.steps == 3 and a.accepted >= 1 and a.accepted_violations == 0
