"""The layering of docs/architecture.md, enforced: which room may import which, that the language
layer, plan/, usercode/ and the audit never import torch, and that only audit/rundir.py names the
run's files."""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scpo_spec"

# room → the rooms it may import (besides itself); the flow of docs/architecture.md
ALLOWED = {
    "errors": set(),
    "dtype": set(),
    "usercode": {"errors"},
    "language": {"usercode", "errors"},
    "plan": {"language", "usercode", "errors"},
    "systems": {"language", "plan", "usercode", "dtype", "errors"},
    "policies": {"language", "usercode", "systems", "dtype", "errors"},
    "compile": {"language", "plan", "systems", "policies", "dtype", "errors"},
    "verify": {"language", "plan", "systems", "policies", "compile", "dtype", "errors"},
    "audit": {"language", "plan", "usercode", "compile", "verify", "errors"},
    "engine": {"language", "plan", "usercode", "systems", "policies", "compile", "verify", "audit",
               "dtype", "errors"},
    "report": {"language", "plan", "compile", "engine", "audit", "errors"},
    "progress": {"audit"},
    "export": {"language", "compile", "engine", "audit", "report", "dtype", "errors"},
    "lsp": {"language", "compile", "errors"},
    "tracking": {"audit", "report", "errors"},
    "cli": {"language", "plan", "compile", "verify", "engine", "audit", "report", "progress",
            "export", "lsp", "tracking", "errors"},
    "__init__": {"language", "engine"},
    "console": {"cli"},
}


def _room(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0][:-3]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_every_room_imports_only_what_the_flow_allows():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        room = _room(path)
        for module in _imports(path):
            if not module.startswith("scpo_spec."):
                continue
            target = module.split(".")[1]
            if target != room and target not in ALLOWED[room]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, wrong


def test_the_audit_imports_only_numpy_side_of_compile():
    """`scpo audit` must run without torch: from compile it takes the numpy certificate only."""
    for path in (PACKAGE / "audit").rglob("*.py"):
        for module in _imports(path):
            assert module != "torch" and not module.startswith("torch.")
            if module.startswith("scpo_spec.compile"):
                assert module == "scpo_spec.compile.certificate", (path, module)
            if module.startswith("scpo_spec.verify"):  # the verdict words and rule, no torch
                assert module == "scpo_spec.verify.verdicts", (path, module)


def test_language_and_audit_load_without_torch():
    code = ("import sys; import scpo_spec.language.load, scpo_spec.audit.verify, "
            "scpo_spec.audit.rundir, scpo_spec.audit.signing, scpo_spec.audit.runs, "
            "scpo_spec.plan.scenarios, scpo_spec.plan.settings, scpo_spec.plan.code, "
            "scpo_spec.usercode.loader; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_rundir_names_the_run_files():
    names = re.compile(r"""["'](audit\.jsonl|state\.npz|checkpoint\.pt|signature\.json|"""
                       r"""audit\.torn|tensorboard|verify\.json)["']""")
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "rundir.py" and names.search(p.read_text(encoding="utf-8"))]
    assert not offenders


def test_only_rundir_parses_a_stored_spec_below_the_cli():
    """Downstream rooms never re-read text: the CLI parses the user's file, rundir the run's."""
    parsing = {"check_text", "parse_model", "parse_text", "check_file", "load_spec"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        room = _room(path)
        if room in ("language", "cli", "lsp", "__init__") or path.name == "rundir.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and {a.name for a in node.names} & parsing:
                offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders
