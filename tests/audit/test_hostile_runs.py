"""Hostile run directories cost a reader a message, not the machine: each case runs the real
command in a fresh process (capped at 3 GB of address space as a safety net) and asserts its
message, its documented exit status, no traceback, and the time and peak memory it took."""

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scpo_spec.engine.run import train
from tests.engine_specs import small_di, spec_of, write_spec
from tests.forgery import copy_run, records, write_rechained

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 30          # every command ends within this …
PEAK = 2**30          # … and holds less than this in memory
CAP = 3 * 2**30       # the address space a command gets: a regression cannot take the machine

# Runs `argv` under the cap in a process of its own, and prints its exit status, output, time and
# peak resident memory (RUSAGE_CHILDREN of this helper is that one command's).
MEASURE = r"""
import json, resource, subprocess, sys, time
cap, argv = int(sys.argv[1]), sys.argv[2:]
cap_it = lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
start = time.monotonic()
try:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=2 * %d, preexec_fn=cap_it)
    rc, out = p.returncode, p.stdout + p.stderr
except subprocess.TimeoutExpired as e:
    rc, out = "timeout", str(e.stdout or "") + str(e.stderr or "")
seconds = time.monotonic() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": rc, "out": out, "seconds": seconds, "peak": peak}))
""" % SECONDS

LOAD_RUN = ("import sys\nfrom scpo_spec import load_run\nfrom scpo_spec.errors import ScpoError\n"
            "try:\n    load_run(sys.argv[1])\nexcept ScpoError as e:\n    print(e)\n"
            "    sys.exit(1)\n")


def command(kind: str, run: Path, tmp_path: Path) -> tuple[list[str], tuple]:
    """The argv of one reader of `run`, and the exit statuses its documentation allows for a run
    it refuses."""
    cli = [sys.executable, "-m", "scpo_spec.cli"]
    return {
        "audit": (cli + ["audit", str(run)], (1,)),
        "report": (cli + ["report", str(run), "--format", "md", "-o", str(tmp_path / "r.md")],
                   (0, 1)),  # 0: written, saying NOT CERTIFIED and why
        "runs": (cli + ["runs", str(run.parent), "--json"], (0,)),  # the table names the failed
        # checks; --json says why in full
        "load_run": ([sys.executable, "-c", LOAD_RUN, str(run)], (1,)),
        "export": (cli + ["export", str(run), "--format", "torchscript", "-o",
                          str(tmp_path / "p.pt")], (1,)),
    }[kind]


def measured(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p), "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(CAP), *argv], capture_output=True,
                          text=True, env=env, timeout=4 * SECONDS)
    return json.loads(proc.stdout)


def assert_refused(kind: str, run: Path, tmp_path: Path, says: str) -> str:
    argv, statuses = command(kind, run, tmp_path)
    got = measured(argv)
    out = " ".join(got["out"].split())
    assert got["rc"] != "timeout", f"{kind} still running after {2 * SECONDS} s"
    assert "Traceback" not in got["out"], got["out"][-3000:]
    assert got["rc"] in statuses, (got["rc"], out[-2000:])
    assert says in out, out[-2000:]
    assert "CERTIFIED:" not in out.replace("NOT CERTIFIED", "") and "audit passed" not in out
    assert got["seconds"] < SECONDS, got["seconds"]
    assert got["peak"] < PEAK, f"{got['peak'] / 2**20:.0f} MiB"
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    text = small_di(steps=2)
    write_spec(folder, text)
    return train(folder / "spec.scpo", spec_of(text, folder), text, out=folder / "run").run_dir


def place(folder: Path, name: str) -> Path:
    """Where a hostile run goes: alone in a folder of its own (the folder `scpo runs` lists)."""
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    return folder / "runs" / name


def rehashed_spec(base: Path, run: Path, old: str, new: str, drop: str | None = None) -> Path:
    """A forger's run: the header's spec text edited (and its SHA-256, the spec copy, the chain
    and the state file's binding made consistent again); `drop` removes records of that type."""
    copy_run(base, run)
    recs = [r for r in records(run) if r["type"] != drop]
    text = recs[0]["spec"]["text"]
    assert old in text
    text = text.replace(old, new)
    recs[0]["spec"].update(text=text, sha256=hashlib.sha256(text.encode()).hexdigest())
    (run / "spec.scpo").write_text(text, encoding="utf-8")
    write_rechained(run, recs, rebind=True)
    (run / "state.npz.prev").unlink(missing_ok=True)
    return run


def with_deflated_member(base: Path, run: Path, size: int = 2**30) -> Path:
    """A ~1 MB state.npz holding, beside the genuine members, a deflated `size`-byte array."""
    copy_run(base, run)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (size // 8,)})
    with zipfile.ZipFile(base / "state.npz") as src, zipfile.ZipFile(
            run / "state.npz", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        with dst.open("a_bomb.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            zeros = bytes(2**24)
            for _ in range(size // len(zeros)):
                f.write(zeros)
    assert (run / "state.npz").stat().st_size < 4 * 2**20
    return run


def with_last_line_holding(base: Path, run: Path, value: bytes) -> Path:
    """The end record with one more field holding `value` (the chain still holds: nothing
    comes after the last line)."""
    copy_run(base, run)
    lines = (run / "audit.jsonl").read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1].rstrip(b"\n")[:-1] + b',"x":' + value + b"}\n"
    (run / "audit.jsonl").write_bytes(b"".join(lines))
    return run


READERS = ["audit", "runs", pytest.param("report", marks=pytest.mark.slow),
           pytest.param("load_run", marks=pytest.mark.slow),
           pytest.param("export", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind", READERS + ["audit --head"])
def test_a_stored_spec_of_900_million_scenarios_is_refused_before_it_is_sized(base, tmp_path,
                                                                              kind):
    run = rehashed_spec(base, place(tmp_path, "grid"), "count 8", "grid 30000")
    if kind == "audit --head":
        from scpo_spec.audit.rundir import RunDir
        argv = [sys.executable, "-m", "scpo_spec.cli", "audit", str(run), "--head",
                RunDir(run).head()]
        got = measured(argv)
        assert got["rc"] == 1 and "Traceback" not in got["out"], got["out"][-2000:]
        assert "900,000,000 scenarios" in " ".join(got["out"].split())
        assert got["seconds"] < SECONDS and got["peak"] < PEAK
        return
    assert_refused(kind, run, tmp_path, "900,000,000 scenarios")


@pytest.mark.parametrize("kind", READERS)
def test_a_fifo_in_a_run_is_refused_not_waited_on(base, tmp_path, kind):
    run = copy_run(base, place(tmp_path, "fifo"))
    os.mkfifo(run / "spec.evil")
    assert_refused(kind, run, tmp_path, "is a FIFO, not a regular file")


@pytest.mark.parametrize("kind", READERS)
def test_a_spec_copy_linked_to_dev_zero_is_not_read(base, tmp_path, kind):
    run = copy_run(base, place(tmp_path, "zero"))
    (run / "spec.scpo").unlink()
    (run / "spec.scpo").symlink_to("/dev/zero")
    assert_refused(kind, run, tmp_path, "is a link out of its run directory")


@pytest.fixture(scope="module")
def deflated(base, tmp_path_factory):
    return with_deflated_member(base, place(tmp_path_factory.mktemp("bomb"), "bomb"))


@pytest.mark.parametrize("kind", READERS)
def test_a_deflated_gigabyte_in_the_state_file_is_never_decompressed(deflated, tmp_path, kind):
    assert_refused(kind, deflated, tmp_path, "'a_bomb.npy', which is not a member of a state "
                                             "file")


def test_an_oversized_known_member_is_refused_from_its_declared_size(base, tmp_path):
    """A member the state file may hold, declaring more than the log's dimensions allow, is
    refused before it is decompressed."""
    from scpo_spec.audit.verify import audit_run
    run = copy_run(base, tmp_path / "run")
    with zipfile.ZipFile(base / "state.npz") as src, zipfile.ZipFile(
            run / "state.npz", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "a_previous.npy":
                buf = io.BytesIO()
                np.save(buf, np.zeros(2**20))
                data = buf.getvalue()
            dst.writestr(info.filename, data)
    res = audit_run(run)
    assert not res.ok and not res.state_ok
    assert any("a_previous declares 8,388,736 bytes" in p for p in res.problems), res.problems


def test_a_state_file_listing_many_members_is_refused_before_it_is_opened(base, tmp_path):
    """Opening a zip parses its whole central directory: one of 70,000 entries (a zip64 end
    record) is refused from the end record's count, before that."""
    from scpo_spec.audit.verify import audit_run
    run = copy_run(base, tmp_path / "run")
    with zipfile.ZipFile(run / "state.npz", "a") as z:
        for i in range(70_000):
            z.writestr(f"{i}", b"")
    res = audit_run(run)
    assert not res.state_ok
    assert any("it lists 70,007 members" in p for p in res.problems), res.problems


def test_a_holdout_of_100_million_is_a_located_check_error(tmp_path):
    spec = write_spec(tmp_path, small_di().replace("holdout 50", "holdout 100000000"))
    proc = subprocess.run([sys.executable, "-m", "scpo_spec.cli", "check", str(spec)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"})
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1 and "Traceback" not in out  # README: 1 errors
    assert ":17:13: error: holdout 100,000,000 is more than 1,000,000 scenarios" in out, out
    assert "bound P(violation) by 0.0014%" in out


@pytest.mark.parametrize("kind", READERS)
def test_a_stored_holdout_of_100_million_is_never_computed(base, tmp_path, kind):
    """The holdout record dropped, so a report would roll out the spec's holdout itself."""
    run = rehashed_spec(base, place(tmp_path, "holdout"), "holdout 50", "holdout 100000000",
                        drop="holdout")
    assert_refused(kind, run, tmp_path, "holdout 100,000,000 is more than 1,000,000 scenarios")


@pytest.mark.parametrize("value, says", [
    (b"[" * 200_000 + b"]" * 200_000, "line 6 is nested more than 16 levels deep"),
    (b"9" * 5_000, "line 6 is not JSON (an integer of 5,000 digits (at most 64))")],
    ids=["nested 200000 deep", "an integer of 5000 digits"])
@pytest.mark.parametrize("kind", READERS)
def test_a_hostile_log_line_is_a_located_problem(base, tmp_path, kind, value, says):
    run = with_last_line_holding(base, place(tmp_path, "line"), value)
    assert len((run / "audit.jsonl").read_bytes().splitlines()) == 6
    assert_refused(kind, run, tmp_path, says)
