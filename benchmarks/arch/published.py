"""The published ARCH-COMP 2024 ACC and TORA controllers, run through this project's tools and,
independently, through plain numpy.

The ONNX files have no licence to ship, so they are never committed: this script copies them from a
local copy of the benchmark repository (a bare mirror, read with `git show`; a checkout; or a
folder of the files as named in /work/arch_published) into benchmarks/arch/published/ (git-ignored),
writes spec variants of benchmarks/arch/{acc,tora}.scpo that use them as `policy onnx`, and prints
for each:

- the repository commit the files came from;
- g(θ₀) as `scpo` computes it (compile_spec's evaluator, the network read by policies/onnx_graph.py);
- g from an independent plain-numpy rollout: the ONNX graph evaluated node by node from its
  initialisers in float64, and the published ODE (dynamicsACC.m, dynamics9.m, transcribed here)
  integrated with the same RK4 and substeps, on the same scenarios;
- `scpo verify`'s verdict, bound and time over the whole initial box.

    python benchmarks/arch/published.py [--source PATH] [--commit SHA] [--no-verify] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "published"
MIRROR = Path("/work/.mirror/verivital+ARCH-COMP2024/repo")
FLAT = Path("/work/arch_published")  # the files copied flat: <benchmark folder>_<file name>


@dataclass(frozen=True)
class Benchmark:
    name: str          # benchmarks/arch/<name>.scpo is the spec the variant is made from
    repo_path: str     # the ONNX file in the ARCH-COMP2024 repository
    controller: str    # the text that replaces the spec's backup and policy


BENCHMARKS = [
    Benchmark("acc", "benchmarks/ACC/controller_5_20.onnx",
              'policy onnx {\n    file = "acc_controller_5_20.onnx"\n'
              "    observe = [v_set, T_gap, v_ego, x_lead - x_ego, v_lead - v_ego]\n}\n"),
    # the network's output is u itself; the plant subtracts 10 (`der x4 = u - 10`), so the
    # variant has no operating point: u = f(x)
    Benchmark("tora", "benchmarks/Benchmark9-Tora/controllerTora.onnx",
              'policy onnx { file = "tora_controllerTora.onnx" }\n'),
]


def local_name(b: Benchmark) -> str:
    return f"{b.name}_{Path(b.repo_path).name}"


# ---- reading the benchmark repository ----

def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def is_git(path: Path) -> bool:
    try:
        _git(path, "rev-parse", "--git-dir")
        return True
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False


def read_published(source: Path, repo_path: str) -> bytes:
    """The file's bytes from a bare mirror or checkout (at HEAD), or a flat copy of the files."""
    flat = source / "_".join(Path(repo_path).parts[1:])
    if flat.is_file():
        return flat.read_bytes()
    if (source / repo_path).is_file():
        return (source / repo_path).read_bytes()
    if is_git(source):
        return _git(source, "show", f"HEAD:{repo_path}")
    raise FileNotFoundError(f"{repo_path} is not in {source}")


def commit_of(source: Path, given: str | None) -> str:
    if given:
        return given
    if is_git(source):
        return _git(source, "rev-parse", "HEAD").decode().strip()
    return "unknown (a folder of copied files: pass --commit)"


# ---- the spec variants ----

def _drop_block(lines: list[str], starts: tuple[str, ...]) -> list[str]:
    """The lines without the top-level entries that start with one of `starts` (a one-line entry,
    or a block up to its closing brace, with a continuation line indented under it) and the
    comment lines right above them."""
    out, depth, dropping = [], 0, False
    for line in lines:
        if not dropping and depth == 0 and line.startswith(starts):
            dropping = True
            while out and out[-1].startswith("#"):  # the entry's own comment goes with it
                out.pop()
        elif dropping and depth == 0 and not line.startswith((" ", "\t")):
            dropping = False
        if not dropping:
            out.append(line)
        depth += line.count("{") - line.count("}")
    return out


def variant_text(b: Benchmark, commit: str) -> str:
    """benchmarks/arch/<name>.scpo with the published network as its policy: no backup, no
    operating point, only the ARCH-COMP constraints (no stability metric); the objective and
    train sections stay because the language requires them (`scpo verify` runs neither)."""
    text = (HERE / f"{b.name}.scpo").read_text()
    text = re.sub(r"\n[ \t]*equilibrium \{[^}]*\}[^\n]*", "", text)
    lines = text.splitlines(keepends=True)
    lines = _drop_block(lines, ("backup ", "policy ", "stability "))
    body = re.sub(r"\n{3,}", "\n\n", "".join(lines))
    body = re.sub(r'(?m)^spec (\w+) "', r'spec \1_published "Published controller: ', body)
    head = (f"# Generated by benchmarks/arch/published.py from benchmarks/arch/{b.name}.scpo: the\n"
            f"# published ARCH-COMP 2024 controller {b.repo_path} (commit {commit[:12]}) as θ₀.\n")
    return head + body.rstrip() + "\n\n" + b.controller


# ---- the independent numpy rollout ----

def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def numpy_network(path: Path):
    """x (N, k) ↦ u (N, m): the ONNX graph interpreted node by node in float64 from its
    initialisers (the ops the ARCH-COMP ACC and TORA files use), the input as the graph's
    declared shape with N in its first axis."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    g = model.graph
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    inp = next(i for i in g.input if i.name not in weights)
    shape = [max(d.dim_value, 1) for d in inp.type.tensor_type.shape.dim]

    def forward(x: np.ndarray) -> np.ndarray:
        env = dict(weights)
        env[inp.name] = np.asarray(x, dtype=np.float64).reshape([-1] + shape[1:])
        for node in g.node:
            a, args = _attrs(node), [env[i] for i in node.input if i]
            op = node.op_type
            if op in ("Sub", "Add", "Mul", "Div"):
                y = {"Sub": np.subtract, "Add": np.add, "Mul": np.multiply,
                     "Div": np.divide}[op](args[0], args[1])
            elif op == "Gemm":
                A, B = args[0], args[1]
                A = A.reshape(A.shape[0], -1)
                A = A.T if a.get("transA", 0) else A
                B = B.T if a.get("transB", 0) else B
                y = a.get("alpha", 1.0) * A @ B
                if len(args) > 2:
                    y = y + a.get("beta", 1.0) * args[2]
            elif op == "MatMul":
                y = args[0] @ args[1]
            elif op == "Conv":  # a kernel that covers the whole input: a dense layer
                W, X = args[1], args[0]
                assert W.shape[2:] == X.shape[2:], "only full-size kernels are interpreted"
                y = np.einsum("nchw,ochw->no", X, W)
                if len(args) > 2:
                    y = y + args[2]
                y = y[:, :, None, None]
            elif op == "Relu":
                y = np.maximum(args[0], 0.0)
            elif op == "Tanh":
                y = np.tanh(args[0])
            elif op == "Sigmoid":
                y = 1.0 / (1.0 + np.exp(-args[0]))
            elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"):
                y = args[0].reshape(args[0].shape[0], -1)
            else:
                raise NotImplementedError(f"numpy oracle: operator {op}")
            env[node.output[0]] = y
        return env[g.output[0].name].reshape(len(x), -1)
    return forward


def acc_rhs(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """dynamicsACC.m: a_lead = -2, mu = 0.0001."""
    mu, a_lead = 0.0001, -2.0
    return np.stack([x[:, 1], x[:, 2], -2 * x[:, 2] + 2 * a_lead - mu * x[:, 1] ** 2,
                     x[:, 4], x[:, 5], -2 * x[:, 5] + 2 * u[:, 0] - mu * x[:, 4] ** 2], axis=1)


def tora_rhs(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """dynamics9.m."""
    return np.stack([x[:, 1], -x[:, 0] + 0.1 * np.sin(x[:, 2]), x[:, 3], u[:, 0] - 10], axis=1)


def acc_observe(x: np.ndarray) -> np.ndarray:
    """ARCH-COMP's features: v_set = 30, T_gap = 1.4, v_ego, D_rel, v_rel."""
    S = len(x)
    return np.stack([np.full(S, 30.0), np.full(S, 1.4), x[:, 4], x[:, 0] - x[:, 3],
                     x[:, 1] - x[:, 4]], axis=1)


def acc_g(X: np.ndarray, U: np.ndarray) -> float:
    """always x_lead − x_ego ≥ 10 + 1.4 v_ego: the worst (10 + 1.4 v_ego) − (x_lead − x_ego)."""
    return float(np.max(10 + 1.4 * X[:, :, 4] - (X[:, :, 0] - X[:, :, 3])))


def tora_g(X: np.ndarray, U: np.ndarray) -> float:
    """always abs(state) ≤ 2: the worst |x_i| − 2."""
    return float(np.max(np.abs(X) - 2))


NUMPY = {"acc": (acc_rhs, acc_observe, acc_g), "tora": (tora_rhs, lambda x: x, tora_g)}


def numpy_rollout(name: str, onnx_path: Path, x0: np.ndarray, horizon: int, dt: float,
                  substeps: int) -> tuple[np.ndarray, np.ndarray, float]:
    """States (S, T+1, n), inputs (S, T, m) and g, all in plain numpy float64."""
    rhs, observe, g = NUMPY[name]
    net = numpy_network(onnx_path)
    h = dt / substeps
    x = np.array(x0, dtype=np.float64)
    X, U = [x], []
    for _ in range(horizon):
        u = net(observe(x))
        for _ in range(substeps):
            k1 = rhs(x, u)
            k2 = rhs(x + h / 2 * k1, u)
            k3 = rhs(x + h / 2 * k2, u)
            k4 = rhs(x + h * k3, u)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        X.append(x)
        U.append(u)
    X, U = np.stack(X, axis=1), np.stack(U, axis=1)
    return X, U, g(X, U)


# ---- this project's numbers ----

def scpo_g(spec_path: Path):
    """(g(θ₀) per metric as compile_spec's evaluator computes it, the scenarios, horizon, dt,
    substeps) — the same scenarios the numpy rollout then uses."""
    from scpo_spec.compile.problem import compile_spec
    from scpo_spec.language.load import check_file
    result = check_file(spec_path)
    if not result.ok:
        raise SystemExit(f"{spec_path}: scpo check failed:\n"
                         + "\n".join(str(d) for d in result.diagnostics))
    compiled = compile_spec(result.spec, spec_path.parent)
    g = compiled.evaluator(compiled.family.theta0[None])[0].tolist()
    system = result.spec.system
    substeps = int(system.substeps) if system.substeps is not None else 1
    return (dict(zip(compiled.evaluator.names, g)), compiled.evaluator.x0.numpy().copy(),
            compiled.evaluator.horizon, float(system.dt), substeps)


def scpo_verify(spec_path: Path, timeout: float = 900) -> dict:
    """`scpo verify SPEC --json`, as a user runs it, and its wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scpo_spec.cli", "verify", str(spec_path),
                           "--json"], capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy())
    wall = time.perf_counter() - start
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        report = {"verdict": f"no JSON (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[-400:]}"}
    report["wall_seconds"] = wall
    report["exit_code"] = proc.returncode
    return report


def prepare(source: Path, commit: str) -> dict[str, Path]:
    """Copy the ONNX files into benchmarks/arch/published/ and write the spec variants."""
    OUT.mkdir(exist_ok=True)
    specs = {}
    for b in BENCHMARKS:
        (OUT / local_name(b)).write_bytes(read_published(source, b.repo_path))
        spec = OUT / f"{b.name}.scpo"
        spec.write_text(variant_text(b, commit))
        specs[b.name] = spec
    return specs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None,
                    help=f"the ARCH-COMP2024 repository (bare mirror or checkout) or a folder of "
                         f"its files (default {MIRROR}, else {FLAT})")
    ap.add_argument("--commit", default=None, help="the commit, for a folder of copied files")
    ap.add_argument("--no-verify", action="store_true", help="skip `scpo verify`")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    source = args.source or (MIRROR if MIRROR.exists() else FLAT)
    if not source.exists():
        print(f"no benchmark repository at {source}: pass --source", file=sys.stderr)
        return 2
    commit = commit_of(source, args.commit)
    specs = prepare(source, commit)
    results = {"source": str(source), "commit": commit, "benchmarks": {}}
    for b in BENCHMARKS:
        spec = specs[b.name]
        g, x0, horizon, dt, substeps = scpo_g(spec)
        _, _, g_np = numpy_rollout(b.name, OUT / local_name(b), x0, horizon, dt, substeps)
        entry = {"spec": str(spec), "scenarios": int(len(x0)), "horizon": horizon,
                 "g_scpo": g, "g_numpy": g_np}
        if not args.no_verify:
            entry["verify"] = scpo_verify(spec)
        results["benchmarks"][b.name] = entry
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"ARCH-COMP2024 repository: {source}, commit {commit}")
    for name, e in results["benchmarks"].items():
        (metric, g_s), = e["g_scpo"].items()
        print(f"{name}: {e['scenarios']} scenarios × {e['horizon']} steps: g(θ₀) scpo {g_s:.12g}, "
              f"numpy {e['g_numpy']:.12g} (difference {abs(g_s - e['g_numpy']):.2e})")
        v = e.get("verify")
        if v is not None:
            c = v.get("constraints", {}).get(metric, {})
            print(f"  scpo verify: {v.get('verdict')}, bound {c.get('bound')}, "
                  f"cells {v.get('cells')}, {v.get('seconds', float('nan')):.2f} s verification "
                  f"({v['wall_seconds']:.1f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
