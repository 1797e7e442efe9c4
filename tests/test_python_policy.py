"""`policy python "module:factory"`: any nn.Module as a policy family, batched over candidates
with torch.func (scpo_spec/policies/python_module.py), and every way the factory can be wrong."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from scpo_spec.policies.python_module import ModuleFamily, PythonPolicyError, load_python_module
from tests.numerics import assert_close_across_paths

NETS = '''
import torch
from torch import nn


class Skip(nn.Module):
    """u = W2 tanh(W1 x + b1) + b2 + S x: a hidden layer and a linear skip connection."""

    def __init__(self, n=2, m=1, h=6):
        super().__init__()
        self.inner = nn.Linear(n, h)
        self.outer = nn.Linear(h, m)
        self.skip = nn.Linear(n, m, bias=False)

    def forward(self, x):
        return self.outer(torch.tanh(self.inner(x))) + self.skip(x)


def make_skip():
    torch.manual_seed(3)
    return Skip()


def make_wide():
    return Skip(n=3, m=1)


def make_float32():
    return nn.Sequential(nn.Linear(2, 1))


def broken():
    raise ValueError("hidden width must be even")


def not_a_module():
    return [1, 2, 3]


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        y = self.lin(x)
        if y.sum() > 0:  # data-dependent control flow: no vmap
            return y
        return -y


def branchy():
    return Branchy()


class RunningMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("mean", torch.zeros(2))

    def forward(self, x):
        self.mean.mul_(0.9).add_(0.1 * x.mean(0))  # a running statistic, updated in place
        return self.lin(x - self.mean)


def running_mean():
    return RunningMean()


def no_parameters():
    return torch.nn.Tanh()


class Normalised(nn.Module):
    """Input normalisation held in buffers (not θ), then a linear layer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, -0.25]))
        self.register_buffer("std", torch.tensor([2.0, 4.0]))
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        return self.lin((x - self.mean) / self.std)


def normalised():
    return Normalised()
'''


@pytest.fixture()
def nets(tmp_path):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent(NETS), encoding="utf-8")
    return tmp_path


def skip_numpy(theta: np.ndarray, x: np.ndarray, n=2, m=1, h=6) -> np.ndarray:
    """The skip module by hand from its flat θ (named_parameters order: inner.weight,
    inner.bias, outer.weight, outer.bias, skip.weight), on states x (B, n)."""
    sizes = [h * n, h, m * h, m, m * n]
    W1, b1, W2, b2, S = np.split(theta, np.cumsum(sizes)[:-1])
    W1, W2, S = W1.reshape(h, n), W2.reshape(m, h), S.reshape(m, n)
    return np.tanh(x @ W1.T + b1) @ W2.T + b2 + x @ S.T


def test_skip_connection_batched_equals_each_candidate_alone(nets):
    module = load_python_module("my_nets:make_skip", 2, 1, nets)
    family = ModuleFamily(2, 1, module)
    assert family.d == 6 * 2 + 6 + 6 + 1 + 2
    torch.manual_seed(0)
    thetas = family.theta0 + 0.3 * torch.randn(5, family.d, dtype=torch.float64)
    x = torch.randn(5, 7, 2, dtype=torch.float64)
    batched = family.forward(thetas, x)
    assert batched.shape == (5, 7, 1) and batched.dtype == torch.float64
    for c in range(5):
        alone = family.module(thetas[c])(x[c])  # a copy of the module holding θ_c
        assert_close_across_paths(batched[c], alone, f"candidate {c}")
        assert_close_across_paths(batched[c], skip_numpy(thetas[c].numpy(), x[c].numpy()))
    # the rollout's view of the same candidates: the same numbers
    with torch.no_grad():
        assert_close_across_paths(family.batched(thetas)(x), batched.detach())


def test_theta0_is_the_module_as_constructed(nets):
    module = load_python_module("my_nets:make_skip", 2, 1, nets)
    torch.manual_seed(3)
    fresh = __import__("my_nets").Skip()
    expected = torch.cat([p.detach().reshape(-1) for _, p in fresh.named_parameters()])
    family = ModuleFamily(2, 1, module)
    assert family.theta0.dtype == torch.float64
    np.testing.assert_array_equal(family.theta0.numpy(), expected.double().numpy())


def test_jacobian_at_origin_is_exact(nets):
    family = ModuleFamily(2, 1, load_python_module("my_nets:make_skip", 2, 1, nets))
    torch.manual_seed(1)
    thetas = family.theta0 + 0.3 * torch.randn(3, family.d, dtype=torch.float64)
    J = family.jacobian_at_origin(thetas)
    assert J.shape == (3, 1, 2)
    for c, theta in enumerate(thetas.numpy()):  # W2 diag(1 − tanh²(b1)) W1 + S, by hand
        W1, b1, W2, _, S = np.split(theta, np.cumsum([12, 6, 6, 1]))
        W1, W2, S = W1.reshape(6, 2), W2.reshape(1, 6), S.reshape(1, 2)
        expected = W2 @ np.diag(1 - np.tanh(b1) ** 2) @ W1 + S
        assert_close_across_paths(J[c], expected)


def test_gradient_through_the_batched_forward(nets):
    """A supervised or cost objective differentiates the forward in θ (never a safety metric)."""
    family = ModuleFamily(2, 1, load_python_module("my_nets:make_skip", 2, 1, nets))
    x = torch.randn(1, 4, 2, dtype=torch.float64)
    theta = family.theta0.clone().requires_grad_(True)
    loss = family.forward(theta[None], x).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    f = lambda th: (skip_numpy(th, x[0].numpy()) ** 2).sum()  # noqa: E731
    eps, base = 1e-6, family.theta0.numpy()
    fd = np.array([(f(base + eps * e) - f(base - eps * e)) / (2 * eps)
                   for e in np.eye(family.d)])
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-6, atol=1e-8)


def test_module_is_float64_and_holds_theta(nets):
    family = ModuleFamily(2, 1, load_python_module("my_nets:make_float32", 2, 1, nets))
    theta = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
    policy = family.module(theta)
    out = policy(np.array([[1.0, 2.0]]))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[0.5 - 2.0 + 0.25]], rtol=0, atol=1e-15)


@pytest.mark.parametrize("factory, n, m, words", [
    ("missing_module:make", 2, 1, "no module named 'missing_module'"),
    ("my_nets:make_skp", 2, 1, "has no attribute 'make_skp'"),
    ("my_nets", 2, 1, 'not of the form "module:callable"'),
    ("my_nets:broken", 2, 1, "ValueError: hidden width must be even"),
    ("my_nets:not_a_module", 2, 1, "returned a list, not a torch.nn.Module"),
    ("my_nets:no_parameters", 2, 1, "without parameters"),
    ("my_nets:make_skip", 3, 1, "mat1 and mat2 shapes cannot be multiplied"),
    ("my_nets:make_wide", 3, 2, "maps states (3, 3) to (3, 1); the spec's 3 states and 2 "
                                "inputs need (3, 2)"),
    ("my_nets:branchy", 2, 1, "data-dependent control flow"),
    ("my_nets:running_mean", 2, 1, "cannot be evaluated for 2 candidate weight vectors at "
                                   "once (torch.func.vmap over functional_call): RuntimeError"),
])
def test_each_way_a_factory_is_wrong_is_said(nets, factory, n, m, words):
    with pytest.raises(PythonPolicyError) as err:
        load_python_module(factory, n, m, nets)
    assert words in str(err.value), str(err.value)
    assert err.value.exit_code == 2


def test_did_you_mean_for_a_misspelt_factory(nets):
    with pytest.raises(PythonPolicyError) as err:
        load_python_module("my_nets:make_skp", 2, 1, nets)
    assert err.value.hint is not None and "make_skip" in err.value.hint


MLP_NETS = '''
import torch
from torch import nn


def make_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
'''


def test_rollout_metrics_equal_the_built_in_family_on_the_same_network(tmp_path):
    """The same MLP as `policy mlp` and as a python module: every metric of a C-candidate
    rollout (the spectral radius through the module's Jacobian at the origin included) agrees."""
    from scpo_spec.compile.evaluator import RolloutEvaluator
    from scpo_spec.compile.problem import compile_spec
    from tests.engine_specs import small_di, spec_of
    (tmp_path / "mlp_nets.py").write_text(MLP_NETS, encoding="utf-8")
    text = small_di().replace("residual = backup  ", "")
    compiled = compile_spec(spec_of(text, tmp_path), tmp_path)
    family = ModuleFamily(2, 1, load_python_module("mlp_nets:make_mlp", 2, 1, tmp_path))
    assert family.d == compiled.family.d
    ev = compiled.evaluator
    mine = RolloutEvaluator(ev.dynamics, family, ev.metrics, ev.x0.numpy(), ev.horizon,
                            ev.reducer)
    torch.manual_seed(2)
    thetas = compiled.family.theta0 + 0.2 * torch.randn(4, family.d, dtype=torch.float64)
    assert_close_across_paths(mine(thetas), ev(thetas))
    X, U = mine.rollout(thetas)
    X_ref, U_ref = ev.rollout(thetas)
    assert_close_across_paths(X, X_ref)
    assert_close_across_paths(U, U_ref)


# ---- the spec's `policy python "module:factory"` ----
MLP_LINE = "policy mlp { hidden = [8]  activation = tanh  residual = backup  seed = 0 }"


def safe_nets(K: np.ndarray) -> str:
    """A skip-connection module whose θ₀ is safe on small_di: u = K x + W2 tanh(W1 x + b1),
    the hidden branch's output layer at zero (the spec's θ₀ must verify)."""
    return textwrap.dedent(f'''
        import torch
        from torch import nn

        class SkipLqr(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = nn.Linear(2, 6)
                self.outer = nn.Linear(6, 1)
                self.skip = nn.Linear(2, 1, bias=False)

            def forward(self, x):
                return self.outer(torch.tanh(self.inner(x))) + self.skip(x)

        def make_policy():
            torch.manual_seed(0)
            net = SkipLqr()
            with torch.no_grad():
                net.outer.weight.zero_()
                net.outer.bias.zero_()
                net.skip.weight.copy_(torch.tensor({np.asarray(K).tolist()!r}))
            return net
        ''')


def python_spec(home, steps: int = 3) -> str:
    from tests.test_torch_policies import lqr_gain
    (home / "skip_nets.py").write_text(safe_nets(lqr_gain(home)), encoding="utf-8")
    from tests.engine_specs import small_di
    return small_di(steps=steps).replace(MLP_LINE, 'policy python "skip_nets:make_policy"')


def test_check_locates_each_error_at_the_label(nets):
    from scpo_spec.compile.usercode import check_code
    from tests.engine_specs import small_di, spec_of
    for factory, words in [("my_nets:make_skp", "has no attribute 'make_skp'"),
                           ("my_nets:broken", "ValueError: hidden width must be even"),
                           ("my_nets:branchy", "data-dependent control flow")]:
        text = small_di().replace(MLP_LINE, f'policy python "{factory}"')
        diags = check_code(spec_of(text, nets), nets)
        assert len(diags) == 1 and words in diags[0].message, diags
        line = text.splitlines().index(f'policy python "{factory}"') + 1
        assert (diags[0].span.line, diags[0].span.column) == (line, 15), diags[0].span


def test_check_cli_exit_and_location(nets):
    import subprocess
    import sys
    from tests.engine_specs import small_di
    text = small_di().replace(MLP_LINE, 'policy python "my_nets:broken"')
    (nets / "spec.scpo").write_text(text, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "scpo_spec.cli", "check", "spec.scpo"],
                          cwd=nets, capture_output=True, text=True, timeout=120)
    line = text.splitlines().index('policy python "my_nets:broken"') + 1
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"spec.scpo:{line}:15" in proc.stdout and "hidden width must be even" in proc.stdout


def test_policy_python_trains_and_is_data_to_readers(tmp_path):
    from scpo_spec.audit.verify import audit_run
    from scpo_spec.engine.run import RunError, train
    from scpo_spec.engine.trained import load_run
    from tests.engine_specs import spec_of
    text = python_spec(tmp_path)
    spec = spec_of(text, tmp_path)
    res = train(tmp_path / "spec.scpo", spec, text, out=tmp_path / "run")
    a = audit_run(res.run_dir)
    assert a.ok and a.steps == 3 and a.accepted >= 1 and a.accepted_violations == 0
    header = json.loads((tmp_path / "run" / "audit.jsonl").read_text().splitlines()[0])
    assert [(c["kind"], c["target"]) for c in header["code"]] == \
        [("policy python", "skip_nets:make_policy")]
    with pytest.raises(RunError, match="policy python 'skip_nets:make_policy'.*--trust-code"):
        load_run(tmp_path / "run")  # without --trust-code: refused, the module not imported
    run = load_run(tmp_path / "run", trust_code=True)
    assert run.verdict.word == "CERTIFIED"
    g = run.metrics()
    assert all(g[name] <= -m for name, m in run.margins.items())
    # the loaded policy is the author's module holding the final θ
    x = np.array([[0.3, -0.2], [-1.0, 0.4]])
    W1, b1, W2, b2, S = np.split(run.theta.numpy(), np.cumsum([12, 6, 6, 1]))
    expected = np.tanh(x @ W1.reshape(6, 2).T + b1) @ W2.reshape(1, 6).T + b2 + x @ S.reshape(1, 2).T
    assert_close_across_paths(run.policy(x), expected)


def test_buffers_are_kept_and_are_not_theta(nets):
    family = ModuleFamily(2, 1, load_python_module("my_nets:normalised", 2, 1, nets))
    assert family.d == 3  # the linear layer's weight and bias; the buffers are not trained
    thetas = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[[0.5, -0.25], [2.5, 3.75]]], dtype=torch.float64).expand(2, -1, -1)
    u = family.forward(thetas, x)
    o = (x[0].numpy() - [0.5, -0.25]) / [2.0, 4.0]
    for c, theta in enumerate(thetas.numpy()):
        assert_close_across_paths(u[c], o @ theta[:2, None] + theta[2])


OBSERVED_NETS = '''
import torch
from torch import nn


def make_observed():
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
'''


def test_observation_and_output_scale_wrap_a_python_module_as_any_policy(tmp_path):
    """u = s ⊙ net(o), o = observe(x): the python module and the built-in MLP family, the same
    network and the same `observe`/`output_scale`, give the same rollouts and metrics (the
    spectral radius through ∂o/∂x at x* included)."""
    from scpo_spec.compile.evaluator import RolloutEvaluator
    from scpo_spec.compile.problem import compile_spec
    from tests.engine_specs import small_di, spec_of
    (tmp_path / "observed_nets.py").write_text(OBSERVED_NETS, encoding="utf-8")
    wrap = "observe = [position, velocity, position * velocity]  output_scale = [0.5]"
    mlp = small_di().replace(MLP_LINE, f"policy mlp {{ hidden = [8]  activation = tanh  {wrap} }}")
    py = small_di().replace(MLP_LINE, f'policy python "observed_nets:make_observed" {{ {wrap} }}')
    ref = compile_spec(spec_of(mlp, tmp_path), tmp_path)
    mine = compile_spec(spec_of(py, tmp_path), tmp_path)
    assert isinstance(mine.family, ModuleFamily) and mine.family.d == ref.family.d == 3 * 8 + 8 + 9
    torch.manual_seed(4)
    thetas = ref.family.theta0 + 0.3 * torch.randn(3, ref.family.d, dtype=torch.float64)
    assert_close_across_paths(mine.evaluator(thetas), ref.evaluator(thetas))
    X, U = mine.evaluator.rollout(thetas)
    X_ref, U_ref = ref.evaluator.rollout(thetas)
    assert_close_across_paths(U, U_ref)
    x = np.array([[0.3, -0.2], [1.0, 0.5]])  # the module view: the same u = s ⊙ net(o)
    assert_close_across_paths(mine.family.module(thetas[1])(x), ref.family.module(thetas[1])(x))
