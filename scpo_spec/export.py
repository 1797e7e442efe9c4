"""`scpo export`: a run's certified policy as a standalone ONNX or TorchScript file.

A view of a finished run (docs/architecture.md: beside cli/): the policy is `load_run`'s
(the last θ the log accepted, the backup included — a gain or a TorchScript controller — and,
around an operating point, u*, x*, the observation map and the output scale), float64,
states (N, n) → inputs (N, m) with a dynamic batch axis.  The verdict is every reader's
(`audit.verdict`, read from the log alone: nothing is re-trained or rolled out), and a run that
is not CERTIFIED is refused unless `force`, which the file then says (`forced: true`).

The file carries the run's identity (`metadata`): the spec's SHA-256 (as in the header), the
audit log's head hash, θ's hash (records.theta_sha256: SHA-256 of its float64 little-endian
bytes, the log's own name for the policy), the verdict and its failures.  ONNX: one
`metadata_props` entry per key (strings; lists and booleans as JSON); TorchScript: the same
object as the extra file `scpo.json` (`torch.jit.load(f, _extra_files={"scpo.json": ""})`).

Before the file is put in place, it is run once (onnxruntime, when installed, or torch.jit.load)
on random states and compared with `load_run(...).policy`; a mismatch above 1e-9 is refused.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scpo_spec.audit.records import theta_sha256
from scpo_spec.audit.loaded import LoadedRun
from scpo_spec.audit.rundir import RunError
from scpo_spec.dtype import DTYPE
from scpo_spec.engine.trained import load_run
from scpo_spec.errors import ScpoError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
EXTRA_FILE = "scpo.json"
METADATA_FORMAT = "scpo-export/1"
TOLERANCE = 1e-9
ONNX_OPSET = 17
JSON_KEYS = {"failures", "forced", "states", "inputs", "code"}  # ONNX: written as JSON text


class ExportError(ScpoError):
    """The run cannot be exported (not certified without --force, a policy ONNX cannot
    express, a missing package, a written file that does not reproduce the policy)."""

    exit_code = 1


@dataclass
class Exported:
    path: Path
    metadata: dict
    max_error: float | None  # the written file against load_run's policy (None: not checked)


def default_output(run_dir: str | Path, fmt: str) -> Path:
    """`<run-name>.onnx` / `<run-name>.pt` in the current directory: never inside the run
    directory, which stays exactly as its log left it."""
    return Path.cwd() / (Path(run_dir).resolve().name + FORMATS[fmt])


def export_run(run_dir: str | Path, fmt: str, output: str | Path | None = None,
               force: bool = False, trust_code: bool = False) -> Exported:
    """Write the run's policy as `fmt` ("onnx" | "torchscript"); ExportError / RunError when
    it cannot be (a run that is not CERTIFIED, without `force`, among them)."""
    from scpo_spec.audit.verdict import judge
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}' (onnx or torchscript)")
    loaded = LoadedRun(run_dir)  # read once: the verdict here and load_run's are one
    audit, verdict = judge(loaded)
    if not verdict.certified and not force:
        raise ExportError(f"{Path(run_dir)} is NOT CERTIFIED ({'; '.join(verdict.failures)}); "
                          "not exporting its policy (--force exports it anyway, marked "
                          "forced: true in the file)")
    run = load_run(loaded, trust_code=trust_code, allow_incomplete=force)
    around = getattr(run._family, "around", None)
    if around is not None and around.uncertain:
        raise ExportError("the policy's `observe` reads parameters, which the exported file "
                          "cannot be given (it takes the state alone); not exporting it")
    theta_hash = theta_sha256(run.theta.numpy())
    if theta_hash != audit.final_theta:  # load_run already binds them; say so if not
        raise RunError(f"{run.path}: the policy loaded ({theta_hash[:16]}…) is not the log's "
                       f"last accepted one ({str(audit.final_theta)[:16]}…)")
    metadata = {
        "format": METADATA_FORMAT,
        "run": run.path.name,
        "spec_name": run.spec.name.name if run.spec.name else "",
        "spec_sha256": run.header.spec.get("sha256"),
        "head": loaded.head,
        "theta_sha256": theta_hash,
        "verdict": verdict.word,
        "failures": list(verdict.failures),
        "forced": bool(force and not verdict.certified),
        "states": run.state_names,
        "inputs": run.input_names,
        "dtype": "float64",
        "code": list(run.header.code or []),
    }
    core = run.policy.core.eval()
    target = Path(output) if output is not None else default_output(run.path, fmt)
    target = target.expanduser()
    if run.path.resolve() in target.resolve().parents:
        raise ExportError(f"{target} is inside the run directory {run.path}; a run directory "
                          "stays as its log left it (write the export elsewhere)")
    if target.is_dir():
        raise ExportError(f"{target} is a directory; give a file name with -o")
    if not target.parent.is_dir():
        raise ExportError(f"{target.parent} does not exist")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        scripted = _script(core)
        if fmt == "onnx":
            _write_onnx(scripted, len(run.state_names), metadata, tmp)
            max_error = _check_onnx(tmp, run.policy, len(run.state_names))
        else:
            torch.jit.save(scripted, str(tmp),
                           _extra_files={EXTRA_FILE: json.dumps(metadata, sort_keys=True)})
            max_error = _check_torchscript(tmp, run.policy, len(run.state_names))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return Exported(target, metadata, max_error)


def _script(core: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.script(core)
        except Exception as e:  # noqa: BLE001 - a backup TorchScript cannot compose
            raise ExportError(f"the policy cannot be written as TorchScript: "
                              f"{_first_line(e)}") from None


def _write_onnx(scripted: torch.jit.ScriptModule, n: int, metadata: dict, path: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the `onnx` package (pip install "
                          "'scpo-spec[onnx]')") from None
    example = torch.zeros(2, n, dtype=DTYPE)
    # the TorchScript-based exporter: it takes a scripted policy (and so a TorchScript backup
    # inside it), which torch.export-based `dynamo=True` refuses; float64 and a dynamic batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(scripted, (example,), str(path), dynamo=False,
                              input_names=["state"], output_names=["action"],
                              dynamic_axes={"state": {0: "batch"}, "action": {0: "batch"}},
                              opset_version=ONNX_OPSET)
        except Exception as e:  # noqa: BLE001 - an operator ONNX has no counterpart for
            raise ExportError(f"the policy cannot be written as ONNX: {_first_line(e)}") from None
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))


def read_onnx_metadata(path: str | Path) -> dict:
    """The identity an exported ONNX file carries (values decoded back from JSON)."""
    import onnx
    return {p.key: json.loads(p.value) if p.key in JSON_KEYS else p.value
            for p in onnx.load(str(path)).metadata_props}


def read_torchscript_metadata(path: str | Path) -> dict:
    """The identity an exported TorchScript file carries (its `scpo.json`)."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra[EXTRA_FILE])


def _probe(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(64, n)) * 2.0


def _compare(got: np.ndarray, policy, x: np.ndarray, what: str) -> float:
    ref = np.asarray(policy(x), dtype=np.float64)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        raise ExportError(f"the written {what} file returns {got.shape} values for "
                          f"{x.shape} states; the policy returns {ref.shape}")
    err = float(np.max(np.abs(got - ref)))
    if not err <= TOLERANCE:
        raise ExportError(f"the written {what} file differs from the run's policy by {err:.3g} "
                          f"(more than {TOLERANCE:g}); not exporting it")
    return err


def _check_onnx(path: Path, policy, n: int) -> float | None:
    try:
        import onnxruntime
    except ImportError:
        return None  # nothing to run it with here; the exporter's own graph is trusted
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _probe(n)
    return _compare(session.run(None, {"state": x})[0], policy, x, "ONNX")


def _check_torchscript(path: Path, policy, n: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    x = _probe(n)
    with torch.no_grad():
        got = loaded(torch.from_numpy(x)).numpy()
    return _compare(got, policy, x, "TorchScript")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
