"""A run's ONNX backup is fingerprinted like code (the header records its SHA-256), but it is data:
reading the run needs no --trust-code, and a file changed since training is refused by every
reader that rolls the policy out (load_run, `scpo verify RUN`, `--resume`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.policies.test_onnx import _cli, _lqr_gain, _spec, saturated


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    from scpo_spec.engine.run import train
    from tests.engine_specs import spec_of
    base = tmp_path_factory.mktemp("onnx_run")
    (base / "c.onnx").write_bytes(saturated(_lqr_gain(base)))
    spec_path = _spec(base, steps=2)
    text = spec_path.read_text()
    res = train(spec_path, spec_of(text, base), text, out=base / "run")
    return base, res.run_dir


def test_the_header_records_the_onnx_file_and_reading_the_run_needs_no_trust(onnx_run):
    import hashlib
    from scpo_spec import load_run
    base, run_dir = onnx_run
    header = json.loads((run_dir / "audit.jsonl").read_text().splitlines()[0])
    entry, = header["code"]
    assert entry["kind"] == "backup onnx" and entry["target"] == "c.onnx"
    assert entry["sha256"] == hashlib.sha256((base / "c.onnx").read_bytes()).hexdigest()
    run = load_run(run_dir)  # no trust_code: an ONNX file is read, never run
    assert run.verdict.certified
    assert run.policy(np.zeros(2)).shape == (1,)


def test_a_changed_onnx_file_is_refused_by_every_reader(onnx_run, tmp_path):
    import shutil
    from scpo_spec import load_run
    from scpo_spec.errors import ScpoError
    base, run_dir = onnx_run
    original = (base / "c.onnx").read_bytes()
    try:  # the same graph with other weights: a different controller under the same name
        (base / "c.onnx").write_bytes(saturated(_lqr_gain(base) * 0.5))
        with pytest.raises(ScpoError, match="not the file the run was trained with"):
            load_run(run_dir)
        result = _cli("verify", run_dir, "--no-record")
        assert result.exit_code == 2 and "not the file the run was trained with" in result.output
        copy = tmp_path / "run"
        shutil.copytree(run_dir, copy)
        result = _cli("train", base / "spec.scpo", "--out", copy, "--resume", "--steps", "3",
                      "--no-report")
        assert result.exit_code == 1, result.output  # a refused run, as any resume refusal
        assert "changed since the run was trained" in result.output
    finally:
        (base / "c.onnx").write_bytes(original)
    assert load_run(run_dir).verdict.certified  # the file put back: the run reads again
