"""Every example in docs/language.md is real.

The scheme (also stated at the end of docs/language.md):

- ```scpo blocks:
  - a block preceded by `<!-- file: NAME -->` is a file for the ```console transcripts; it may be
    invalid on purpose and is not checked here;
  - a block with a line starting `spec ` is a complete spec (unless preceded by
    `<!-- fragment -->`, as the example of the header alone is): `check_text(text, path="docs.scpo",
    base_dir=<repo root>)` must give no diagnostics (data paths are relative to the repo root);
  - any other block is a fragment of top-level items (sections, `const` lines, `constraint` and
    `stability` lines). It must parse with `read_scpo` with no diagnostics, and each item, built on
    its own, must give no error other than an unknown constant (a fragment may use constants that
    other examples define).
  - In a fragment, `const NAME = EXPR  # = VALUE` must fold to VALUE (`# ≈ VALUE`: to 6 digits), and
    a line annotated `# error: TEXT` must give an error containing TEXT.
- ```yaml blocks with a `spec:` line are complete YAML specs and must pass with syntax="yaml"; any
  other ```yaml block must at least be YAML. Complete specs (of either syntax) that share a spec
  name must load into the same model (the YAML twin means the same thing).
- ```console blocks are terminal transcripts: in a fresh folder holding every file block and the
  repository's data/, each `$ COMMAND` is run with bash (stdout and stderr together, no colour) and
  its output must be exactly the lines shown up to the next `$ `.
- ```python blocks must run (from the repository root).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from scpo_spec.language import words as W
from scpo_spec.language import check as C
from scpo_spec.language import evaluate as EV
from scpo_spec.language import functions as FN
from scpo_spec.language import model as M
from scpo_spec.language import sections as SEC
from scpo_spec.language.build import Builder
from scpo_spec.language.diagnostics import Collector
from scpo_spec.language.document import Map
from scpo_spec.language.load import check_text, parse_model
from scpo_spec.language.scpo_reader import read_scpo
from scpo_spec.language.source import Source

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "language.md"
FILE_MARKER = re.compile(r"^<!--\s*file:\s*(\S+)\s*-->\s*$")
FRAGMENT_MARKER = "<!-- fragment -->"


@dataclass
class Block:
    lang: str
    text: str
    line: int            # line of the opening fence in the document
    file: str | None     # set by a preceding `<!-- file: NAME -->`
    fragment: bool = False  # set by a preceding `<!-- fragment -->`

    @property
    def id(self) -> str:
        return f"{self.lang}@L{self.line}"

    @property
    def is_full_scpo(self) -> bool:
        return not self.fragment and any(ln.startswith("spec ") for ln in self.text.splitlines())

    @property
    def is_full_yaml(self) -> bool:
        return any(ln.startswith("spec:") for ln in self.text.splitlines())


def read_blocks(path: Path = DOC) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        assert j < len(lines), f"unclosed code block at line {start + 1}"
        marker, fragment = None, False
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and (fm := FILE_MARKER.match(lines[k].strip())):
            marker = fm.group(1)
        fragment = k >= 0 and lines[k].strip() == FRAGMENT_MARKER
        blocks.append(Block(lang, "\n".join(lines[start + 1:j]) + "\n", start + 1, marker,
                            fragment))
        i = j + 1
    return blocks


BLOCKS = read_blocks()
SCPO = [b for b in BLOCKS if b.lang == "scpo" and b.file is None]
FULL_SCPO = [b for b in SCPO if b.is_full_scpo]
FRAGMENTS = [b for b in SCPO if not b.is_full_scpo]
YAML = [b for b in BLOCKS if b.lang == "yaml" and b.file is None]
FULL_YAML = [b for b in YAML if b.is_full_yaml]
FILES = [b for b in BLOCKS if b.file is not None]
CONSOLE = [b for b in BLOCKS if b.lang == "console"]
PYTHON = [b for b in BLOCKS if b.lang == "python"]

ids = lambda b: b.id  # noqa: E731


def headlines(diagnostics) -> list[str]:
    return [f"{d.headline()} (hint: {d.hint})" for d in diagnostics]


# --------------------------------------------------------------------------- the document itself
def test_the_document_has_every_kind_of_example():
    assert len(FULL_SCPO) >= 4 and len(FRAGMENTS) >= 10
    assert len(FULL_YAML) >= 3
    assert CONSOLE and FILES
    assert len({b.file for b in FILES}) == len(FILES), "two file blocks with the same name"


def test_every_choice_word_is_documented():
    """When words.py gains a choice (an activation, a solver, a loss, …), the reference says so."""
    text = DOC.read_text(encoding="utf-8")
    words = [*W.ACTIVATIONS, *W.SOLVERS, *W.LOSSES, *W.ON_VIOLATION, *W.BACKTRACK, *W.PRECISIONS,
             *W.SMOOTHNESS_MODES, *W.POLICY_INIT, *W.DEVICES, *W.INTEGRATORS, "hard", "smooth",
             *FN.SIGNAL_FUNCTIONS, *FN.NUMERIC_FUNCTIONS, *EV.BUILTIN_CONSTANTS,
             *SEC.WORDS, "spectral_radius", "state", "input"]
    missing = [w for w in words if f"`{w}" not in text]
    assert not missing, f"not documented: {missing}"
    train = text.split("## 10. `train`", 1)[1].split("\n## ", 1)[0]
    for key, default in M.TRAIN_DEFAULTS.items():
        row = next((ln for ln in train.splitlines() if ln.startswith(f"| `{key}")), None)
        assert row is not None, f"train entry {key} has no row in the train table"
        assert row.rstrip().endswith(f"| `{default}` |"), f"default of {key} is not `{default}`"


def test_every_formula_function_is_used_in_a_checked_spec():
    used = "\n".join(b.text for b in FULL_SCPO)
    for f in FN.SIGNAL_FUNCTIONS:
        assert f"{f}(" in used, f"no complete example uses {f}(…)"
    for word in ("always", "eventually[", "at final", " in [", " or ", " and ", "<=", ">=", " < ",
                 " > ", "lyapunov(backup)", "spectral_radius", "terminal"):
        assert word in used, f"no complete example uses {word!r}"


# --------------------------------------------------------------------------- .scpo examples
@pytest.mark.parametrize("block", FULL_SCPO, ids=ids)
def test_complete_scpo_spec_is_clean(block):
    result = check_text(block.text, path="docs.scpo", base_dir=ROOT)
    assert result.diagnostics == [], headlines(result.diagnostics)
    assert result.ok


@pytest.mark.parametrize("block", FRAGMENTS, ids=ids)
def test_scpo_fragment_parses(block):
    source = Source(path="docs.scpo", text=block.text)
    doc, diagnostics = read_scpo(source)
    assert diagnostics == [], headlines(diagnostics)
    assert doc is not None and doc.entries, "the fragment holds no item"


@pytest.mark.parametrize("block", FRAGMENTS, ids=ids)
def test_scpo_fragment_items_build(block):
    """Each item on its own: right entry names, kinds and choice words (constants may be
    defined elsewhere, and errors annotated `# error:` are expected)."""
    source = Source(path="docs.scpo", text=block.text)
    doc, _ = read_scpo(source)
    expected = {i + 1 for i, ln in enumerate(block.text.splitlines()) if "# error:" in ln}
    problems = []
    for entry in doc.entries:
        collector = Collector()
        Builder(source, collector).build(Map(span=doc.span, entries=[entry]), "docs.scpo")
        for d in collector.items:
            if "unknown constant" in d.message or (d.span and d.span.line in expected):
                continue
            problems.append(f"{d.headline()} (hint: {d.hint})")
    assert not problems, problems


ANNOTATION = re.compile(r"^const\s+(\w+)\s*=\s*(.+?)\s+#\s*(=|≈|error:)\s*(.+?)\s*$")


def annotated(block: Block) -> list[tuple[int, str, str, str]]:
    out = []
    for number, line in enumerate(block.text.splitlines(), start=1):
        m = ANNOTATION.match(line)
        if m:
            out.append((number, m.group(1), m.group(3), m.group(4)))
    return out


ANNOTATED = [b for b in FRAGMENTS if annotated(b)]


@pytest.mark.parametrize("block", ANNOTATED, ids=ids)
def test_annotated_constants_fold_to_the_value_shown(block):
    lines = block.text.splitlines()
    notes = annotated(block)
    error_lines = {n for n, _, kind, _ in notes if kind == "error:"}
    good = "\n".join("" if i + 1 in error_lines else ln for i, ln in enumerate(lines))
    values = {}
    if good.strip():
        result = parse_model(good, path="docs.scpo")
        assert result.diagnostics == [], headlines(result.diagnostics)
        values = {c.name: c.value.value for c in result.spec.consts}
    for number, name, kind, shown in notes:
        if kind == "error:":
            only = "\n".join(ln if i + 1 == number or i + 1 not in error_lines else ""
                             for i, ln in enumerate(lines))
            got = [d for d in parse_model(only, path="docs.scpo").diagnostics
                   if d.span and d.span.line == number]
            assert any(shown in d.message for d in got), (
                f"line {number}: expected an error containing {shown!r}, got {headlines(got)}")
            continue
        want = ast.literal_eval(shown)
        rtol = 1e-12 if kind == "=" else 1e-6
        np.testing.assert_allclose(np.asarray(values[name], dtype=float),
                                   np.asarray(want, dtype=float), rtol=rtol, atol=1e-12,
                                   err_msg=f"line {number}: const {name}")


# --------------------------------------------------------------------------- YAML examples
@pytest.mark.parametrize("block", FULL_YAML, ids=ids)
def test_complete_yaml_spec_is_clean(block):
    result = check_text(block.text, path="docs.yaml", syntax="yaml", base_dir=ROOT)
    assert result.diagnostics == [], headlines(result.diagnostics)
    assert result.ok


def test_yaml_fragments_are_yaml():
    for block in YAML:
        if not block.is_full_yaml:
            assert isinstance(yaml.safe_load(block.text), (dict, list)), block.id


def _twins() -> list[tuple[str, list[Block]]]:
    groups: dict[str, list[Block]] = {}
    for block in [*FULL_SCPO, *FULL_YAML]:
        syntax = "yaml" if block.lang == "yaml" else "scpo"
        result = parse_model(block.text, path=f"docs.{syntax}", syntax=syntax)
        if result.spec is not None and result.spec.name is not None:
            groups.setdefault(result.spec.name.name, []).append(block)
    return [(name, blocks) for name, blocks in groups.items()
            if len({b.lang for b in blocks}) > 1]


TWINS = _twins()


def test_there_are_yaml_twins():
    assert len(TWINS) >= 3, [name for name, _ in TWINS]


@pytest.mark.parametrize("name, blocks", TWINS, ids=[name for name, _ in TWINS])
def test_twins_mean_the_same(name, blocks):
    specs = []
    for block in blocks:
        syntax = "yaml" if block.lang == "yaml" else "scpo"
        result = check_text(block.text, path=f"docs.{syntax}", syntax=syntax, base_dir=ROOT)
        assert result.ok, headlines(result.diagnostics)
        specs.append((block.id, result.spec))
    first_id, first = specs[0]
    for other_id, other in specs[1:]:
        assert first.same_as(other), f"{first_id} and {other_id} differ"


# --------------------------------------------------------------------------- terminal transcripts
def transcript(block: Block) -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            assert pairs, f"{block.id}: output before the first `$ ` command"
            pairs[-1][1].append(line)
    return [(cmd, "\n".join(out)) for cmd, out in pairs]


SEPARATOR = "\x1e"


def _normalise(text: str) -> str:
    return "\n".join(ln.rstrip() for ln in text.strip("\n").splitlines())


def _shell_env(folder: Path) -> dict:
    """The environment a transcript runs in: `scpo` on the PATH (this checkout), no colour, a
    100-column terminal."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "scpo"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m scpo_spec.cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1", TERM="dumb",
               COLUMNS="100", PYTHONIOENCODING="utf-8",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    return env


def run_transcript(block: Block, folder: Path, env: dict) -> list[tuple[str, str, str]]:
    """Run a console block's commands in `folder`: (command, output, expected) each."""
    pairs = transcript(block)
    script = ["set +e"]
    for cmd, _ in pairs:
        script.append(f"{cmd} 2>&1; __status=$?; printf '{SEPARATOR}\\n'; (exit $__status)")
    run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=folder, env=env,
                         capture_output=True, text=True, encoding="utf-8", timeout=600)
    outputs = run.stdout.split(SEPARATOR + "\n")[:len(pairs)]
    assert len(outputs) == len(pairs), run.stdout + run.stderr
    return [(cmd, got, expected) for (cmd, expected), got in zip(pairs, outputs)]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("block", CONSOLE, ids=ids)
def test_console_transcript(block, tmp_path):
    for f in FILES:
        (tmp_path / f.file).write_text(f.text, encoding="utf-8")
    shutil.copytree(ROOT / "data", tmp_path / "data")
    for cmd, got, expected in run_transcript(block, tmp_path, _shell_env(tmp_path)):
        assert _normalise(got) == _normalise(expected), (
            f"`{cmd}` printed:\n{got}\n--- but the document shows:\n{expected}")


# --------------------------------------------------------------------------- the tutorial
TUTORIAL = ROOT / "docs" / "tutorial.md"
ELLIPSIS = "…"


def glob_match(expected: str, got: str) -> bool:
    """A transcript's output against what the page shows: a line `…` stands for any number of
    lines, `…` inside a line for any text; everything else must be exactly there."""
    want, have = _normalise(expected).splitlines(), _normalise(got).splitlines()

    def line(pattern: str, text: str) -> bool:
        parts = [re.escape(p) for p in pattern.split(ELLIPSIS)]
        return re.fullmatch(".*".join(parts), text) is not None

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(have)
        if want[i].strip() == ELLIPSIS:
            return any(match(i + 1, k) for k in range(j, len(have) + 1))
        return j < len(have) and line(want[i], have[j]) and match(i + 1, j + 1)

    return match(0, 0)


def test_glob_match_is_strict_where_the_page_is_explicit():
    assert glob_match("a\n…\nz", "a\nb\nc\nz") and glob_match("a\n…\nz", "a\nz")
    assert glob_match("loss … → …", "loss 8.2 → 3.5")
    assert not glob_match("a\n…\nz", "a\nb")          # the last line must be there
    assert not glob_match("a\nz", "a\nb\nz")           # no `…`: no extra line
    assert not glob_match("exit 1", "exit 0")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_tutorial_runs_as_written(tmp_path):
    """docs/tutorial.md from top to bottom in one fresh folder: its files written, its console
    blocks run in order (train before export …) with their outputs compared, its Python run."""
    blocks = read_blocks(TUTORIAL)
    for b in blocks:
        if b.file is not None:
            (tmp_path / b.file).write_text(b.text, encoding="utf-8")
    env = _shell_env(tmp_path)
    ran = 0
    for b in blocks:
        if b.file is not None:
            continue
        if b.lang == "console":
            for cmd, got, expected in run_transcript(b, tmp_path, env):
                assert glob_match(expected, got), (
                    f"docs/tutorial.md:{b.line}: `{cmd}` printed:\n{got}\n--- but the page "
                    f"shows:\n{expected}")
                ran += 1
        elif b.lang == "python":
            proc = subprocess.run([sys.executable, "-c", b.text], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"docs/tutorial.md:{b.line}:\n{proc.stderr}"
            ran += 1
    assert ran >= 8


# --------------------------------------------------------------------------- python
@pytest.mark.parametrize("block", PYTHON, ids=ids)
def test_python_example_runs(block, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    exec(compile(block.text, f"docs/language.md:{block.line}", "exec"), {})
