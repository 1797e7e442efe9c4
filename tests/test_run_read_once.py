"""A run is read once: `load_run`, the report's evidence and `scpo export` each open the run's
audit log once and parse its stored spec once (counted in a fresh process by an audit hook on
`open` and a counter around the .scpo reader), and the verdict's reasons are data (a problem's
kind, the end record's state), not words searched for in sentences."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scpo_spec.audit.loaded import LoadedRun
from scpo_spec.audit.problem import ProblemKind
from scpo_spec.audit.records import EndState
from scpo_spec.audit.rundir import LOG_NAME
from scpo_spec.audit.verdict import judge
from scpo_spec.audit.verify import audit_run
from scpo_spec.engine.run import train
from tests.engine_specs import small_di, spec_of, write_spec

ROOT = Path(__file__).resolve().parents[1]

COUNT = """
import collections, json, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
counts = collections.Counter()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, Path)) and str(args[0]).endswith(%r):
        counts["log"] += 1
sys.addaudithook(hook)
import scpo_spec.language.load as load
read = load.read_scpo
def counted(source):
    counts["parse"] += 1
    return read(source)
load.read_scpo = counted  # the one caller of the .scpo reader
from scpo_spec import load_run
from scpo_spec.export import export_run
from scpo_spec.report.evidence import gather
seen = {}
for name, call in (("load_run", lambda: load_run(run)),
                   ("evidence", lambda: gather(run)),
                   ("export", lambda: export_run(run, "torchscript", out / "policy.pt"))):
    counts.clear()
    call()
    seen[name] = dict(counts)
print(json.dumps(seen))
""" % LOG_NAME


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("read_once")
    text = small_di(steps=3)
    path = write_spec(folder, text)
    return train(path, spec_of(text, folder), text, out=folder / "run").run_dir


def test_load_run_evidence_and_export_each_read_the_log_and_parse_the_spec_once(run, tmp_path):
    out = subprocess.run([sys.executable, "-c", COUNT, str(run), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {name: {"log": 1, "parse": 1} for name in ("load_run", "evidence", "export")}
    assert (tmp_path / "policy.pt").is_file()  # the export did run to its end


def test_a_loaded_run_is_audited_and_judged_once(run):
    loaded = LoadedRun(run)
    first = judge(loaded)
    assert judge(loaded)[0] is first[0] and judge(loaded)[1] is first[1]
    assert audit_run(loaded) is first[0]
    assert first[1].certified == judge(run)[1].certified  # and it is the path's verdict


def test_a_broken_chain_is_said_by_the_kind_of_its_problems(run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    lines = (run / LOG_NAME).read_bytes().splitlines(keepends=True)
    record = json.loads(lines[2])
    record["prev"] = "0" * 64  # a link of the chain that is not the SHA-256 of the line before
    lines[2] = (json.dumps(record) + "\n").encode()
    (copy / LOG_NAME).write_bytes(b"".join(lines))
    audit, verdict = judge(copy)
    chain = [p for p in audit.problems if p.kind is ProblemKind.CHAIN]
    assert chain and all("line 3" in p for p in chain)
    check = next(c for c in verdict.checks if c.name == "hash chain")
    assert not check.ok and check.detail == "; ".join(chain)
    assert json.loads(json.dumps(audit.as_dict()))["problems"] == list(map(str, audit.problems))


@pytest.mark.parametrize("reason, state", [
    ("completed", EndState.COMPLETED),
    ("stopped at step 4: stalled", EndState.STOPPED),
    ("interrupted after step 2", EndState.INTERRUPTED),
    ("interrupted after step 2: the plant 'p' raised", EndState.INTERRUPTED)])
def test_the_end_state_is_read_from_the_reason_in_one_place(reason, state):
    assert EndState.of(reason) is state
    if state is not EndState.COMPLETED:  # and the writer's words are the reader's
        step = int(reason.split("step ")[1].split(":")[0])
        why = reason.split(": ", 1)[1] if ": " in reason else ""
        assert state.reason(step, why) == reason
