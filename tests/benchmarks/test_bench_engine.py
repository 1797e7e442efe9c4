"""benchmarks/bench_engine.py's figure 0b runs on a real evaluator (it reaches into the evaluator's
own rollout buffers and spectral radius, so a change there must not silently break it).  Nothing
here looks at a time beyond its being measured."""

import importlib.util
import io
import sys

import pytest
from rich.console import Console

from scpo_spec.compile.problem import compile_spec
from tests.conftest import ROOT
from tests.engine_specs import small_di, spec_of


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_engine",
                                                  ROOT / "benchmarks" / "bench_engine.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _compiled(tmp_path, text):
    return compile_spec(spec_of(text, tmp_path), tmp_path)


def _printed(bench, split) -> str:
    out = io.StringIO()
    bench.console = Console(file=out, width=200)
    bench.print_excess(split, threads=1)
    return out.getvalue()


def test_the_excess_split_times_each_part_of_an_evaluation(bench, tmp_path):
    compiled = _compiled(tmp_path, small_di())
    split = bench.excess_split(compiled, bench.candidates(compiled), pairs=3)
    assert split["pairs"] == 3
    assert set(split["median"]) == {"evaluator", "rollout", "rollout_rho", "plain"}
    assert all(t > 0 for t in split["median"].values())
    assert {"excess", "rollout", "rho", "metrics", "rho_after", "rho_again"} <= set(split)
    text = _printed(bench, split)
    for row in ("plain same-numbers policy loop", "rollout beyond the policy",
                "closed-loop spectral radius", "metrics and finiteness"):
        assert row in text


def test_without_a_spectral_radius_the_split_has_no_such_part(bench, tmp_path):
    text = "\n".join(line for line in small_di().splitlines()
                     if not line.startswith("stability"))
    compiled = _compiled(tmp_path, text)
    assert not compiled.evaluator.needs_spectral
    split = bench.excess_split(compiled, bench.candidates(compiled), pairs=2)
    assert "rho" not in split and "rollout_rho" not in split["median"]
    printed = _printed(bench, split)
    assert "spectral radius" not in printed and "metrics and finiteness" in printed
