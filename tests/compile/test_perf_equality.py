"""Every performance change of the hot path is guarded here: the optimised result equals the
previous implementation, kept below as a reference (the per-step loop with `torch.stack`, the
unbatched `forward`, …) — bit for bit where the operations and their order are unchanged.

Where the optimised rollout writes a plant's `x·Aᵀ + u·Bᵀ` with a fused multiply-add into its
buffer (addmm/baddbmm) and the reference adds two products, the two agree bit for bit with this
project's CPU torch on x86-64 AVX2 (CI's machine), but not with every BLAS: torch 2.11 on an
AVX-512 Xeon (benchmarks/gpu_check.sh's machine) rounds the fused add differently.  Those
comparisons are `close` (1e-12 relative, non-finite entries in the same places)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scpo_spec.compile.problem import compile_spec
from scpo_spec.compile.signals import Trace
from scpo_spec.dtype import DTYPE
from scpo_spec.language.load import load_spec
from scpo_spec.systems.dynamics import RolloutViews
from scpo_spec.policies.policy import _activation_slope

ROOT = Path(__file__).resolve().parents[2]
TORCH_SPECS = ["double_integrator.scpo", "double_integrator_safe_teacher.scpo",
               "linear_stability.scpo", "pendulum.scpo", "pendulum_hold.yaml",
               "regression.scpo", "cartpole.scpo", "bicycle_lane.scpo"]


def compiled_of(name: str):
    path = ROOT / "specs" / name
    return compile_spec(load_spec(path), path.parent)


def bank_of(compiled, C: int = 6, scale: float = 1e-2, seed: int = 0) -> torch.Tensor:
    theta0 = compiled.family.theta0
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(C, theta0.numel(), generator=gen, dtype=DTYPE)
    return theta0[None] + scale * z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)


# ---- the previous implementations, kept as references -------------------------------------
def reference_rollout(ev, thetas, x0=None):
    """The rollout as it was: one `family.forward` and `dynamics.step` per step, `torch.stack`."""
    x0 = ev.x0 if x0 is None else x0
    C, (S, n), T, m = thetas.shape[0], x0.shape, ev.horizon, ev.dynamics.m
    x = x0.expand(C, S, n)
    states, inputs = [x], []
    for _ in range(T):
        u = ev.family.forward(thetas, x)
        x = ev.dynamics.step(x, u)
        states.append(x)
        inputs.append(u)
    return torch.stack(states, dim=2), torch.stack(inputs, dim=2).reshape(C, S, T, m)


def reference_violations(ev, thetas, rollout=None):
    """`per_scenario` as it was: finiteness from `isfinite(·).all()` over every number."""
    X, U = reference_rollout(ev, thetas) if rollout is None else rollout
    trace = Trace(X, U, ev.spectral_radius(thetas) if ev.needs_spectral else None)
    S = X.shape[1]
    cols = []
    for metric in ev.metrics:
        v = metric.per_scenario(trace).t
        cols.append(v.reshape(v.shape[0], v.shape[1]).expand(thetas.shape[0], S))
    h = torch.stack(cols, dim=2)
    finite = torch.isfinite(X).flatten(2).all(2) & torch.isfinite(U).flatten(2).all(2)
    h = torch.where(finite.unsqueeze(2) & torch.isfinite(h), h, torch.inf)
    if trace.spectral_radius is not None:
        h = torch.where(~torch.isfinite(trace.spectral_radius).view(-1, 1, 1), torch.inf, h)
    return h


@pytest.fixture
def exact_tanh(monkeypatch):
    """The rollout's tanh as torch.tanh: every other change is bit for bit."""
    from scpo_spec.policies import policy
    monkeypatch.setattr(policy, "FAST_TANH", False)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> bool:
    """Same shape, the same non-finite entries in the same places, and the finite ones within
    `tol` (relative to max(1, |b|))."""
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if a.shape != b.shape or not torch.equal(fa, fb) or not same(a[~fa], b[~fb]):
        return False
    both = fa & fb
    return bool(((a[both] - b[both]).abs() <= tol * b[both].abs().clamp_min(1.0)).all())


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN and inf included."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(
        torch.equal(a.view(torch.int64), b.view(torch.int64)))


# ---- the rollout: preallocated time-major buffers, in-place layers ------------------------
@pytest.mark.parametrize("fast_tanh", [False, True], ids=["exact_tanh", "fast_tanh"])
@pytest.mark.parametrize("name", TORCH_SPECS)
def test_rollout_is_the_per_step_loop_to_1e_12(name, fast_tanh, monkeypatch):
    from scpo_spec.policies import policy
    monkeypatch.setattr(policy, "FAST_TANH", fast_tanh)
    c = compiled_of(name)
    thetas = bank_of(c)
    with torch.no_grad():
        X, U = c.evaluator.rollout(thetas)
        Xr, Ur = reference_rollout(c.evaluator, thetas)
        assert close(X, Xr) and close(U, Ur)
        assert close(c.evaluator.per_scenario(thetas), reference_violations(c.evaluator, thetas))
        assert close(c.evaluator(thetas), reference_violations(c.evaluator, thetas).amax(1))


def test_tanh_via_sigmoid_is_tanh_to_a_few_ulps():
    from scpo_spec.policies.policy import tanh_via_sigmoid_
    z = torch.cat([torch.randn(200_000, dtype=DTYPE, generator=torch.Generator().manual_seed(0)) * 4,
                   torch.linspace(-40, 40, 20_001, dtype=DTYPE),
                   torch.tensor([0.0, 1e-300, -1e-20, 710.0, -710.0, 1e308, -1e308,
                                 torch.inf, -torch.inf], dtype=DTYPE)])
    assert (tanh_via_sigmoid_(z.clone()) - torch.tanh(z)).abs().max() <= 4e-16
    assert torch.isnan(tanh_via_sigmoid_(torch.tensor([torch.nan], dtype=DTYPE))).all()


def test_rollout_of_a_subset_of_scenarios_and_one_candidate(exact_tanh):
    c = compiled_of("double_integrator.scpo")
    ev, thetas = c.evaluator, bank_of(c, C=1)
    with torch.no_grad():
        X, U = ev.rollout(thetas, ev.x0[3:4])
        Xr, Ur = reference_rollout(ev, thetas, ev.x0[3:4])
    assert close(X, Xr) and close(U, Ur)  # the fused plant and gain products: see the top


def test_a_diverging_rollout_keeps_its_inf_and_nan_where_they_were(exact_tanh):
    """Scenarios that leave the finite numbers, each in its own way, and candidates that do:
    the same scenarios are +inf as with the old `isfinite(·).all()`, and the others keep their
    numbers.  Built so that no rounding difference between BLAS builds can change which
    scenario diverges (a bank of huge random weights made that chaotic on an AVX-512 CPU)."""
    c = compiled_of("double_integrator.scpo")
    ev = c.evaluator
    thetas = bank_of(c, C=3)
    thetas[1] *= 1e200  # every weight 1e200: inputs overflow, then inf − inf = NaN
    thetas[2, -1] = float("nan")  # one NaN weight: every scenario NaN
    x0 = ev.x0.clone()
    x0[1, 0] = float("nan")
    x0[2, 1] = float("inf")
    x0[3, 1] = -1e200  # a finite rollout whose metrics overflow (a square of ~1e199)
    with torch.no_grad():
        h = ev.per_scenario(thetas, x0)
        want = reference_violations(ev, thetas, reference_rollout(ev, thetas, x0))
    assert close(h, want)
    bad = ~torch.isfinite(h).all(2)
    assert bad[:, 1:4].all() and bad[1:].all() and not bad[0, 4:].any()
    assert bool(torch.isfinite(h[0, 4:]).all())


def test_reused_rollout_buffers_change_no_number_and_leak_nothing(exact_tanh):
    """`per_scenario` rolls out into buffers kept per shape: bit for bit the numbers of fresh
    ones, whatever shapes came before (four shapes: one is dropped and made again), and a
    rollout handed out earlier is not overwritten by a later evaluation."""
    c = compiled_of("double_integrator.scpo")
    ev = c.evaluator
    banks = [bank_of(c, C=C, seed=C) for C in (6, 1, 2, 3, 6, 1)]
    with torch.no_grad():
        X, U = ev.rollout(banks[0])
        X0, U0 = X.clone(), U.clone()
        for thetas in banks:
            h = ev.per_scenario(thetas)
            assert close(h, reference_violations(ev, thetas))
            assert same(h, ev.per_scenario(thetas))
            Xf, Uf = ev._rollout_on_device(thetas, ev.x0)  # fresh tensors
            Xr, Ur = ev._rollout_on_device(thetas, ev.x0, reuse=True)
            assert same(Xf, Xr) and same(Uf, Ur)
        assert same(X, X0) and same(U, U0)
    assert len(ev._scratch) <= 3


def crafted(X: torch.Tensor, U: torch.Tensor, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    X, U = X.clone(), U.clone()
    if case == "nan in one state component":
        X[1, 5, 17, 1] = torch.nan
    elif case == "inf in an input only":
        U[2, 7, 30, 0] = torch.inf
    elif case == "-inf in a state":
        X[0, 0, 60, 0] = -torch.inf
    elif case == "huge but finite":  # |x| ~ 1e300: every sum stays finite
        X[0, 3] *= 1e300
        U[1, 4] *= -1e300
    return X, U


@pytest.mark.parametrize("case", ["nan in one state component", "inf in an input only",
                                  "-inf in a state", "huge but finite"])
def test_finiteness_from_sums_is_the_all_isfinite_check(case, exact_tanh, monkeypatch):
    """A scenario's rollout is finite iff the sum of its numbers is: a NaN or inf in any one
    component, of a state or of an input, makes that scenario +inf in every metric, exactly
    where `isfinite(·).all()` did, and a huge finite rollout keeps its finite metrics."""
    c = compiled_of("double_integrator.scpo")
    ev, thetas = c.evaluator, bank_of(c, C=3)
    with torch.no_grad():
        X, U = crafted(*ev.rollout(thetas), case)
        monkeypatch.setattr(ev, "_rollout_on_device", lambda th, x0, reuse=False, draws=None: (X, U))
        h, ref = ev.per_scenario(thetas), reference_violations(ev, thetas, (X, U))
    assert close(h, ref)
    if case != "huge but finite":
        assert int((~torch.isfinite(h)).any(2).sum()) == 1  # that scenario, and only it
    else:  # |position| ~ 1e300 and |force| ~ 1e300 stay finite (norm(state) squares overflow)
        assert torch.isfinite(h[0, 3, 0]) and torch.isfinite(h[1, 4, 1])


def test_a_rollout_whose_sum_overflows_is_unsafe(exact_tanh, monkeypatch):
    """The one place the sum is conservative: finite numbers near the largest float64 whose
    sum overflows make their scenario +inf (unsafe) in every metric, where `isfinite(·).all()`
    kept the metrics that stayed finite; no other scenario changes."""
    c = compiled_of("double_integrator.scpo")
    ev, thetas = c.evaluator, bank_of(c, C=3)
    with torch.no_grad():
        X, U = ev.rollout(thetas)
        X, U = X.clone(), U.clone()
        X[1, 2, 40:] = 1e308
        monkeypatch.setattr(ev, "_rollout_on_device", lambda th, x0, reuse=False, draws=None: (X, U))
        h, ref = ev.per_scenario(thetas), reference_violations(ev, thetas, (X, U))
    assert torch.isfinite(ref[1, 2]).any() and (h[1, 2] == torch.inf).all()
    h[1, 2], ref[1, 2] = 0.0, 0.0
    assert close(h, ref)


def test_the_max_over_one_number_is_that_number():
    """Reducer.max over an axis of length 1 returns its operand (no copy), NaN and −0 kept."""
    from scpo_spec.compile.signals import Reducer
    x = torch.tensor([[1.5], [torch.nan], [-0.0], [-torch.inf]], dtype=DTYPE)
    for reducer in (Reducer(), Reducer(0.1)):
        assert same(reducer.max(x, 1), x.amax(1, keepdim=True))


def rollout_step_family(activation: str, backup: str):
    from scpo_spec.policies.backup import Backup, GainModule
    from scpo_spec.policies.policy import PolicyFamily
    c = compiled_of("double_integrator.scpo")
    fam = c.family
    bk = {"gain": fam.backup, "none": None,
          "module": Backup(K=fam.backup.K, module=GainModule(fam.backup.K))}[backup]
    return c, PolicyFamily(fam.n, fam.m, fam.layers, True, activation, bk, fam.theta0)


@pytest.mark.parametrize("backup", ["none", "module", "gain"])
@pytest.mark.parametrize("activation", ["tanh", "fast tanh", "relu", "elu", "gelu", "sigmoid",
                                        "softplus", "identity"])
def test_rollout_step_is_the_batched_call(activation, backup, monkeypatch):
    """The evaluated rollout's flat step computes `BatchedForward.__call__`'s actions: bit for
    bit (the same calls on the same operands), except a gain backup added by `addmm_` (a
    fused multiply-add): to 1e-12."""
    from scpo_spec.policies import policy
    monkeypatch.setattr(policy, "FAST_TANH", activation == "fast tanh")
    c, fam = rollout_step_family(activation.replace("fast ", ""), backup)
    thetas = bank_of(c, C=4, scale=1.0)
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(3, 4, 9, fam.n, dtype=DTYPE, generator=gen) * 3
    U = torch.empty(2, 4, 9, fam.m, dtype=DTYPE)
    fast = fam.batched(thetas)
    step = fast.rollout_step(RolloutViews(X, U))
    with torch.no_grad():
        for t in (0, 1, 0):  # the buffers are reused: a second call gives the same numbers
            step(t)
            ref = fast(X[t])
            assert (same if backup != "gain" else close)(U[t], ref)


def test_rollout_step_of_a_linear_policy_is_the_batched_call():
    """No bias, no hidden layer (`policy linear`): one bmm, bit for bit."""
    c = compiled_of("linear_stability.scpo")
    thetas = bank_of(c, C=3, scale=1.0)
    X = torch.randn(2, 3, 5, c.family.n, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    U = torch.empty(1, 3, 5, c.family.m, dtype=DTYPE)
    fast = c.family.batched(thetas)
    with torch.no_grad():
        fast.rollout_step(RolloutViews(X, U))(0)
        assert same(U[0], fast(X[0]))


@pytest.mark.parametrize("name", ["double_integrator.scpo", "pendulum.scpo", "cartpole.scpo"])
def test_the_autograd_rollout_has_the_evaluated_rollouts_numbers(name):
    """Run.simulate with torch input, the cost objective: the same numbers as under no_grad."""
    c = compiled_of(name)
    thetas = bank_of(c, C=2)
    with torch.no_grad():
        X, U = c.evaluator.rollout(thetas)
    Xg, Ug = c.evaluator.rollout(thetas.clone().requires_grad_(True))
    assert Xg.requires_grad and close(X, Xg.detach()) and close(U, Ug.detach())
    Xg.sum().backward()


def test_the_autograd_rollout_is_the_old_loop_and_differentiable(exact_tanh):
    c = compiled_of("double_integrator.scpo")
    thetas = bank_of(c, C=2).requires_grad_(True)
    X, U = c.evaluator.rollout(thetas)
    assert X.requires_grad
    Xr, Ur = reference_rollout(c.evaluator, thetas)
    assert same(X.detach(), Xr.detach()) and same(U.detach(), Ur.detach())


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "gelu", "sigmoid", "softplus"])
def test_batched_forward_is_forward_for_every_activation(activation, exact_tanh):
    from scpo_spec.policies.policy import PolicyFamily
    c = compiled_of("double_integrator.scpo")
    fam = c.family
    other = PolicyFamily(fam.n, fam.m, fam.layers, True, activation, fam.backup, fam.theta0)
    thetas = bank_of(c, C=4, scale=1.0)
    x = torch.randn(4, 9, fam.n, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    fast = other.batched(thetas)
    with torch.no_grad():
        for _ in range(2):  # the buffers are reused: a second call gives the same numbers
            assert same(fast(x), other.forward(thetas, x))
            out = torch.empty(4, 9, fam.m, dtype=DTYPE)
            assert same(fast(x, out=out), other.forward(thetas, x))


def test_batched_forward_with_fast_tanh_is_forward_to_1e_12():
    c = compiled_of("double_integrator.scpo")
    thetas = bank_of(c, C=4, scale=1.0)
    x = torch.randn(4, 9, c.family.n, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert close(c.family.batched(thetas)(x), c.family.forward(thetas, x), 1e-14)


def test_doubled_hidden_layers_give_the_undoubled_fast_tanh_bit_for_bit():
    """2(Wh + b) = (2W)h + 2b exactly: the pre-doubled layers change no bit of 2σ(2z) − 1."""
    from scpo_spec.policies.policy import tanh_via_sigmoid_
    c = compiled_of("double_integrator.scpo")
    fam, thetas = c.family, bank_of(c, C=4, scale=1.0)
    x = torch.randn(4, 9, fam.n, dtype=DTYPE, generator=torch.Generator().manual_seed(3)) * 5
    h, layers = x, list(fam._unpack(thetas))
    for i, (W, b) in enumerate(layers):
        h = torch.baddbmm(b, h, W.transpose(1, 2))
        if i < len(layers) - 1:
            h = tanh_via_sigmoid_(h.clone())
    h = h + fam.backup(x)
    with torch.no_grad():
        assert same(fam.batched(thetas)(x), h)


# ---- the step beyond the rollouts: bank, R and Qᵀs, probes --------------------------------
def reference_candidate_bank(trainer, state, raw):
    """candidate_bank as a plain formula: probe j of step t is ν·z/‖z‖ with z row j of the
    (seed, t) stream, drawn one row at a time, then torch.cat."""
    from scpo_spec.engine.probes import row_generator
    s, d = trainer.s, trainer.d
    nu = trainer.probe_scale(state)
    rows = [torch.from_numpy(row_generator(s.seed, state.step, j).standard_normal(d))
            for j in range(s.directions + 1)]
    probes = [z * (nu / z.norm()) for z in rows]
    previous = state.previous
    if state.accepted == 0 or not float(previous.norm()) > 0:
        previous = probes[s.directions]
    return torch.cat([raw[None], previous[None], torch.stack(probes[:s.directions])], dim=0)


@pytest.mark.parametrize("threads", [1, 3])
def test_candidate_bank_in_place_is_the_per_row_formula(threads, monkeypatch):
    """Bit for bit, whatever the number of threads filling the rows; the probes have norm ν and
    step t's probes do not depend on what earlier steps drew."""
    from scpo_spec.engine import probes
    from scpo_spec.engine.train import Trainer
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    c = compiled_of("double_integrator.scpo")
    trainer = Trainer(c)
    state = trainer.initial_state()
    raw = torch.randn(c.family.d, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    for accepted, step in ((0, 0), (1, 0), (1, 7), (0, 7)):
        state.accepted, state.step = accepted, step
        state.previous = raw * 0.5 if accepted else torch.zeros_like(raw)
        D, kinds, nu, _ = trainer.candidate_bank(state, raw)
        assert same(D, reference_candidate_bank(trainer, state, raw))
        n_probes = kinds.count("probe")
        assert n_probes == c.settings.directions + (accepted == 0)
        assert torch.allclose(D[-n_probes:].norm(dim=1), torch.full((n_probes,), nu,
                                                                   dtype=DTYPE), rtol=1e-14)
    assert probes._POOL is None or threads == 1 or probes._POOL_SIZE == threads


def test_probe_rows_are_standard_normal_and_independent():
    """The (seed, step, row) streams: mean 0, variance 1, no correlation between rows, steps
    or seeds (200 000 numbers each; 6σ bounds)."""
    from scpo_spec.engine.probes import fill_gaussian
    d = 200_000
    a = fill_gaussian(torch.empty(3, d, dtype=DTYPE), seed=0, step=0)
    b = fill_gaussian(torch.empty(1, d, dtype=DTYPE), seed=0, step=1)
    e = fill_gaussian(torch.empty(1, d, dtype=DTYPE), seed=1, step=0)
    tail = fill_gaussian(torch.empty(1, d, dtype=DTYPE), seed=0, step=0, first_row=2)
    assert same(tail[0], a[2])  # row 2 is row 2, drawn alone or with rows 0 and 1
    rows = torch.cat([a, b, e])
    assert rows.mean(dim=1).abs().max() < 6 / d ** 0.5
    assert (rows.var(dim=1) - 1).abs().max() < 6 * (2 / d) ** 0.5
    corr = torch.corrcoef(rows) - torch.eye(5, dtype=DTYPE)
    assert corr.abs().max() < 6 / d ** 0.5


def householder(S_rows_D: torch.Tensor):
    """R and Qᵀs as they were computed: the reduced Householder QR of the normalised d × n bank."""
    D = S_rows_D
    norms = D.norm(dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    Q, R = torch.linalg.qr((D / norms[:, None]).T, mode="reduced")
    return R.numpy(), (Q.T @ D[0]).numpy()


@pytest.mark.parametrize("case", ["random", "zero column", "nearly parallel", "d < n"])
def test_gram_factor_poses_the_householder_problem(case):
    """R and Qᵀs from the Gram matrix pose the same QCQP as the Householder QR of the bank:
    RᵀR equal, and ‖Rξ − Qᵀs‖² equal up to the same constant for every ξ, to 1e-12."""
    from scpo_spec.compile.projection import gram_factor
    gen = torch.Generator().manual_seed(4)
    n, d = (6, 4) if case == "d < n" else (18, 5000)
    D = torch.randn(n, d, dtype=DTYPE, generator=gen)
    D *= torch.logspace(-4, 0, n, dtype=DTYPE)[:, None]  # probes ~ν, the raw step ~r
    if case == "zero column":
        D[3] = 0.0
    if case == "nearly parallel":
        D[1] = D[0] * 0.5 + 1e-9 * D[2]
    S = (D @ D.T).numpy()
    norms = np.sqrt(np.diag(S))
    norms = np.where(norms > 0, norms, 1.0)
    R, t = gram_factor(S, norms, min(n, d))
    Rq, tq = householder(D)
    scale = max(1.0, float(np.abs(Rq.T @ Rq).max()))
    assert np.abs(R.T @ R - Rq.T @ Rq).max() <= 1e-12 * scale
    xi = np.random.default_rng(0).standard_normal((50, n))
    f = ((xi @ R.T - t) ** 2).sum(1) - (t ** 2).sum()
    fq = ((xi @ Rq.T - tq) ** 2).sum(1) - (tq ** 2).sum()
    assert np.abs(f - fq).max() <= 1e-12 * max(1.0, float(np.abs(fq).max()))


def test_theta_is_hashed_once_per_state():
    from scpo_spec.engine import train as T
    c = compiled_of("linear_stability.scpo")
    trainer = T.Trainer(c)
    state = trainer.initial_state()
    calls = []
    original = T.theta_hash
    T.theta_hash = lambda th: calls.append(1) or original(th)
    try:
        state, record = trainer.step(state)
        state, record2 = trainer.step(state)
    finally:
        T.theta_hash = original
    assert record2.theta == record.theta_next
    assert record2.theta_next == state.theta_sha256() == original(state.theta)
    assert len(calls) <= 3  # θ₀ once, then one new θ per accepted step


def test_blocked_gram_is_the_gram_to_1e_12():
    from scpo_spec.compile.projection import GRAM_BLOCK, gram
    gen = torch.Generator().manual_seed(5)
    for d in (GRAM_BLOCK - 1, 3 * GRAM_BLOCK + 17):
        D = torch.randn(18, d, dtype=DTYPE, generator=gen) * torch.logspace(-4, 0, 18,
                                                                            dtype=DTYPE)[:, None]
        S, ref = gram(D), D @ D.T
        assert S.shape == (18, 18) and close(S, ref, 1e-12)
        # the diagonal is ‖d_j‖², to the same accuracy: the probe norms come from it
        assert close(S.diagonal().sqrt(), D.norm(dim=1), 1e-13)


def test_a_power_of_two_times_D_xi_is_D_times_the_scaled_xi_bit_for_bit():
    """The candidate θ + α·(Dᵀξ) (Dᵀξ computed once, for the Armijo search) is θ + Dᵀ(αξ),
    the formula the certificate is about, bit for bit, for every α Armijo can return."""
    from scpo_spec.engine.train import Trainer
    gen = torch.Generator().manual_seed(6)
    D = torch.randn(18, 50_000, dtype=DTYPE, generator=gen)
    theta = torch.randn(50_000, dtype=DTYPE, generator=gen)
    xi = np.random.default_rng(1).standard_normal(18) * 1e-3
    direction = Trainer.combine(xi, D)
    for k in range(11):
        alpha = 0.5 ** k
        assert same(theta + alpha * direction, theta + Trainer.combine(alpha * xi, D))


def test_the_accepted_theta_is_theta_plus_D_xi_bit_for_bit():
    """θ_next is the candidate that was verified, and that candidate is θ + Dᵀξ with the ξ the
    log keeps."""
    from scpo_spec.engine.train import Trainer
    c = compiled_of("double_integrator.scpo")
    trainer = Trainer(c)
    banks = []
    real = trainer.template.bank
    trainer.template.bank = lambda *a: banks.append(real(*a)) or banks[-1]
    state = trainer.initial_state()
    accepted = 0
    for _ in range(4):
        new, record = trainer.step(state)
        if record.accepted:
            accepted += 1
            expected = state.theta + Trainer.combine(record.tries[-1].xi, banks[-1].D)
            assert same(new.theta, expected)
            assert new.theta_sha256() == record.theta_next
        state = new
    assert accepted >= 1


def test_freed_memory_is_kept_for_reuse_without_changing_a_number():
    """glibc's thresholds raised once per process (engine/memory.py): on glibc it takes, and
    asking again changes nothing.  It moves no number: it only changes where freed blocks go."""
    import platform
    from scpo_spec.engine import memory
    took = memory.keep_freed_memory()
    assert took == (platform.libc_ver()[0] == "glibc") and memory.keep_freed_memory() == took


@pytest.mark.parametrize("K", [1, 2, 3, 4, 6])
def test_norm_over_components_is_vector_norm(K):
    """`norm(·)` of a signal added component by component: vector_norm to 1e-15, non-finite
    entries (NaN, an overflowing square) in the same places, and vector_norm itself (K > 4)."""
    from scpo_spec.compile.signals import _norm
    gen = torch.Generator().manual_seed(K)
    t = torch.randn(3, 4, 7, K, dtype=DTYPE, generator=gen) * 10.0 ** torch.randint(
        -5, 5, (3, 4, 7, 1), generator=gen)
    t[0, 0, 0] = 0.0
    t[0, 1, 2, 0] = torch.nan
    t[1, 2, 3, K - 1] = -torch.inf
    t[2, 3, 4, 0] = 1e200
    with torch.no_grad():
        assert close(_norm(t), torch.linalg.vector_norm(t, dim=3, keepdim=True), 1e-15)


def reference_jacobian_at_origin(fam, theta):
    """`jacobian_at_origin` as it was: every layer's pre-activation, tanh computed twice."""
    from scpo_spec.policies.policy import _activation_slope
    C = theta.shape[0]
    J = torch.eye(fam.n, dtype=theta.dtype).expand(C, fam.n, fam.n)
    layers = list(fam._unpack(theta))
    h = torch.zeros(C, 1, fam.n, dtype=theta.dtype)
    for i, (W, b) in enumerate(layers):
        pre = torch.bmm(h, W.transpose(1, 2)) if b is None else torch.baddbmm(b, h, W.transpose(1, 2))
        J = torch.bmm(W, J)
        if i < len(layers) - 1:
            J = _activation_slope(fam.activation, pre).transpose(1, 2) * J
            h = fam._act(pre)
    if fam._gain_t is not None:
        J = J + fam._gain_t.T
    return J


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "gelu", "sigmoid", "softplus",
                                        "identity"])
def test_jacobian_at_origin_is_the_old_chain_rule_bit_for_bit(activation):
    c, fam = rollout_step_family(activation, "gain")
    thetas = bank_of(c, C=4, scale=1.0)
    thetas[1, :5] = torch.inf  # a non-finite weight: the same NaN/inf in the same places
    with torch.no_grad():
        assert same(fam.jacobian_at_origin(thetas), reference_jacobian_at_origin(fam, thetas))


def test_jacobian_at_origin_of_a_linear_policy_is_the_old_one():
    c = compiled_of("linear_stability.scpo")
    thetas = bank_of(c, C=3, scale=1.0)
    assert same(c.family.jacobian_at_origin(thetas), reference_jacobian_at_origin(c.family, thetas))


# ---- the spectral radius ----
def test_a_closed_loop_that_is_not_finite_has_no_spectral_radius():
    """NaN (then +inf violation) where the closed loop holds a NaN or inf — also where LAPACK
    would not have looked at it (torch's eigvals gives [1, 1] for [[1, nan], [0, 1]])."""
    c = compiled_of("double_integrator.scpo")
    ev = c.evaluator
    thetas = bank_of(c, C=3)
    thetas[1, 0] = float("nan")
    thetas[2, 0] = float("inf")
    with torch.no_grad():
        rho = ev.spectral_radius(thetas)
        g = ev(thetas)
    assert torch.isfinite(rho[0]) and torch.isnan(rho[1:]).all()
    margin = ev.names.index("margin")
    assert torch.isfinite(g[0]).all() and (g[1:, margin] == torch.inf).all()
    ev._A, ev._B = torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=DTYPE), 0 * ev._B
    assert torch.isnan(ev.spectral_radius(thetas[:1])).all()


def reference_jacobian_at_origin(fam, theta):
    """The chain rule as it was: from x = 0 and J = I through every layer, W·I and b + W·0 too."""
    C = theta.shape[0]
    z = torch.zeros(C, 1, fam.n, dtype=theta.dtype)
    J = torch.eye(fam.n, dtype=theta.dtype).expand(C, fam.n, fam.n)
    layers, h = list(fam._unpack(theta)), z
    for i, (W, b) in enumerate(layers):
        J = torch.bmm(W, J)
        if i < len(layers) - 1:
            Wt = W.transpose(1, 2)
            pre = torch.bmm(h, Wt) if b is None else torch.baddbmm(b, h, Wt)
            h = fam._act(pre)
            slope = 1 - h ** 2 if fam.activation == "tanh" else _activation_slope(fam.activation, pre)
            J = slope.transpose(1, 2) * J
    if fam._gain_t is not None:
        J = J + fam._gain_t.T
    return J


@pytest.mark.parametrize("name", ["double_integrator.scpo", "pendulum.scpo", "linear_stability.scpo",
                                  "cartpole.scpo"])
def test_the_jacobian_at_the_origin_is_the_old_one_bit_for_bit(name):
    """The first layer taken as it is (W, b) instead of W·I and b + W·0: the same Jacobian but
    for the sign of a zero entry, bit for bit; the spectral radius of A + BJ, now one baddbmm
    (a fused multiply-add: see this module's docstring), to 1e-12."""
    c = compiled_of(name)
    fam = c.family
    thetas = torch.cat([bank_of(c, C=4), bank_of(c, C=3, scale=3.0, seed=1)])
    out, inp = fam.layers[0]
    thetas[1, : out * inp + (out if fam.bias else 0)] = -0.0  # first layer all zeros: signed zeros
    J, ref = fam.jacobian_at_origin(thetas), reference_jacobian_at_origin(fam, thetas)
    assert same(J + 0.0, ref + 0.0)  # x + 0.0 is x, with −0 made +0
    ev = c.evaluator
    if ev.needs_spectral:
        closed = ev._A + ev._B @ ref
        assert close(ev.spectral_radius(thetas), torch.linalg.eigvals(closed).abs().amax(dim=1))
