"""The code a spec names — a `system python` callable, a gymnasium `module:EnvId`, a `backup
torch` or `policy torch` file, a `policy python` factory — found, imported and fingerprinted in
one place; and the ONNX files it names, fingerprinted the same way (they are data: read, never
run).

Importing a module or loading a file runs its author's code, so only `check` and `train` of the
author's own spec do it.  A run's header keeps each piece's identity (its file's SHA-256, found
here WITHOUT importing anything), so a reader who chooses to trust a run's code (`--trust-code`)
runs exactly the code the run was trained with, or is refused.

Modules are looked up in the spec's own directory first, then on the usual `sys.path` (an
installed package, PYTHONPATH): a plant module kept next to its spec just works.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scpo_spec.errors import ScpoError
from scpo_spec.language import model as M
from scpo_spec.language.source import Span


class CodeError(ScpoError):
    """Code a spec names cannot be found, imported or trusted."""


class CodeMismatch(CodeError):
    """A trusted run's code would run from other bytes than it recorded (never caught on the
    way up: the reader refuses the run's code, it is not a diagnostic of the spec)."""


FILE_KINDS = ("backup torch", "policy torch", "backup onnx", "policy onnx")


@dataclass(frozen=True)
class Reference:
    """One piece of code a spec names: `kind` as written ("system python", …), `target` the
    module (`module` or `module:attribute`) or the file path as written, and where."""

    kind: str
    target: str
    span: Span | None

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_KINDS

    @property
    def runs_code(self) -> bool:
        """A TorchScript file or a module runs its author's code; an ONNX file is data (read
        by the onnx package, never run), fingerprinted all the same."""
        return not self.kind.endswith(" onnx")

    @property
    def module(self) -> str:
        return self.target.split(":", 1)[0]


def references(spec: M.Spec) -> list[Reference]:
    """Every piece of code the spec names, in section order."""
    out: list[Reference] = []
    system = spec.system
    if isinstance(system, M.PythonSystem) and system.function is not None:
        out.append(Reference("system python", system.function.value, system.function.span))
    if isinstance(system, M.GymnasiumSystem) and system.env_id is not None \
            and ":" in system.env_id.value:
        out.append(Reference("system gymnasium", system.env_id.value, system.env_id.span))
    for section, node in (("backup", spec.backup), ("policy", spec.policy)):
        kind = getattr(node, "kind", None)
        if kind in ("torch", "onnx") and node.file is not None:
            out.append(Reference(f"{section} {kind}", node.file.value, node.file.span))
    if isinstance(spec.policy, M.PythonPolicy) and spec.policy.factory is not None:
        factory = spec.policy.factory
        out.append(Reference("policy python", factory.value, factory.span))
    return out


def names_code(spec: M.Spec) -> bool:
    """Whether reading the spec's controller would run code (ONNX files do not)."""
    return any(ref.runs_code for ref in references(spec))


@contextmanager
def spec_dir_on_path(base_dir: Path | None):
    """The spec's directory first on the import path while its code is imported (first even
    when it is on the path already, behind some other folder holding a same-named module)."""
    if base_dir is None:
        yield
        return
    sys.path.insert(0, str(base_dir))
    try:
        yield
    finally:
        if sys.path and sys.path[0] == str(base_dir):
            del sys.path[0]
        else:  # pragma: no cover - the module rearranged the path itself
            try:
                sys.path.remove(str(base_dir))
            except ValueError:
                pass


# What actually ran: module name or resolved file → (resolved file, SHA-256 of the bytes run).
# A run's header records the same pair for each piece of code, and --trust-code compares them.
EXECUTED: dict[str, tuple[str, str]] = {}
# While a run's code is trusted (`expecting`): the same keys → the (file, SHA-256) it recorded.
# A piece of code whose file or bytes differ is refused before it runs, not after.
EXPECTED: dict[str, tuple[str, str]] = {}


def _recorded(recorded: list | None, spec: M.Spec, base_dir: Path | None):
    """Each piece of code the spec names, its key in EXECUTED / EXPECTED (the module's name, or
    a file's resolved path; None for a file not found) and the (file, SHA-256) recorded for it."""
    by_key = {(r.get("kind"), r.get("target")): r for r in recorded or [] if isinstance(r, dict)}
    for ref in references(spec):
        entry = by_key.get((ref.kind, ref.target)) or {}
        if ref.is_file:
            path = locate(ref, base_dir)
            key = str(path.resolve()) if path is not None else None
        else:
            key = ref.module
        yield ref, key, (entry.get("file"), entry.get("sha256"))


@contextmanager
def expecting(recorded: list | None, spec: M.Spec, base_dir: Path | None):
    """Only the recorded bytes of each piece of code the spec names may run in this block."""
    saved = dict(EXPECTED)
    EXPECTED.update({key: want for _, key, want in _recorded(recorded, spec, base_dir)
                     if key is not None})
    try:
        yield
    finally:
        EXPECTED.clear()
        EXPECTED.update(saved)


def refuse_unexpected(key: str, ran: tuple[str, str]) -> None:
    """CodeMismatch when a trusted run expects other bytes under `key` than these."""
    want = EXPECTED.get(key)
    if want is not None and ran != want:
        raise CodeMismatch(f"'{key}' would run {ran[0]} (SHA-256 {ran[1][:16]}…), not the file "
                           "and SHA-256 the run recorded; refusing to run it")


class _SourceBytesLoader(importlib.machinery.SourceFileLoader):
    """Runs a module from the source bytes read (and hashed) once, never from __pycache__.
    Python's own loader runs a cached .pyc whenever its header carries the source's mtime and
    size, so a planted .pyc would run in place of the source a run fingerprinted."""

    def __init__(self, fullname: str, path: str, data: bytes):
        super().__init__(fullname, path)
        self._data = data

    def get_code(self, fullname):
        return compile(self._data, self.path, "exec", dont_inherit=True)


def load_module(name: str, base_dir: Path | None):
    """Import `name`, `base_dir` first on the path, its own file run from the bytes that
    `EXECUTED` records (ModuleNotFoundError, or whatever the module raises).  A module already
    loaded this way from the same bytes is reused; its packages are looked up the same way, so
    a same-named package imported earlier from another folder is not taken either."""
    importlib.invalidate_caches()  # a module written since the last import is seen
    with spec_dir_on_path(base_dir):
        return _load(name, target=True)


def _load(name: str, target: bool):
    parent, _, child = name.rpartition(".")
    package = _load(parent, target=False) if parent else None
    search = list(getattr(package, "__path__", [])) if package is not None else None
    found = importlib.machinery.PathFinder.find_spec(name, search)
    if found is None:
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    cached = sys.modules.get(name)
    if not found.origin or not Path(found.origin).is_file():  # a namespace package
        return importlib.import_module(name)
    if not isinstance(found.loader, importlib.machinery.SourceFileLoader):
        return _load_compiled(name, found, cached, package, child, target)
    origin = Path(found.origin).resolve()
    if not target and cached is not None and getattr(cached, "__file__", None) \
            and Path(cached.__file__).resolve() == origin:
        return cached  # a package imported before from this very file
    data = origin.read_bytes()
    ran = (str(origin), hashlib.sha256(data).hexdigest())
    if target:
        refuse_unexpected(name, ran)
    if cached is not None and EXECUTED.get(name) == ran:
        return cached
    loader = _SourceBytesLoader(name, found.origin, data)
    spec = importlib.util.spec_from_file_location(
        name, found.origin, loader=loader,
        submodule_search_locations=found.submodule_search_locations)
    return _execute(spec, cached, package, child, ran)


def _execute(spec, cached, package, child: str, ran: tuple[str, str]):
    """Run a module from `spec` as sys.modules[name] (the previous entry put back if it
    raises), bind it in its package, and record what ran."""
    name = spec.name
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if cached is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = cached
        raise
    if package is not None:
        setattr(package, child, module)
    EXECUTED[name] = ran
    return module


def _load_compiled(name, found, cached, package, child, target: bool):
    """A compiled (or sourceless .pyc) module: its file is what runs.  One imported earlier
    from another file is never taken in its place."""
    origin = Path(found.origin).resolve()
    ran = (str(origin), sha256_file(origin))
    if target:
        refuse_unexpected(name, ran)
    if cached is not None and getattr(cached, "__file__", None) \
            and Path(cached.__file__).resolve() == origin \
            and (not target or EXECUTED.get(name) == ran):
        return cached
    return _execute(found, cached, package, child, ran)


def import_module(name: str, base_dir: Path | None):
    """`load_module` for the spec's author, with a CodeError naming what went wrong (not found,
    or the import itself raised) instead of a traceback."""
    try:
        return load_module(name, base_dir)
    except CodeMismatch:
        raise
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            where = f" (looked next to the spec, in {base_dir}, and on sys.path)" \
                if base_dir else ""
            raise CodeError(f"no module named '{name}'{where}") from None
        raise CodeError(f"importing module '{name}' failed: {one_line(err)}") from None
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the author's module raised
        raise CodeError(f"importing module '{name}' failed: {one_line(err)}") from None


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def locate(ref: Reference, base_dir: Path | None) -> Path | None:
    """The file behind a reference, found without importing or loading anything (a package's
    `__init__` is not run: each level is looked up with the path finder alone)."""
    if ref.is_file:
        path = Path(ref.target)
        return path if path.is_absolute() else (base_dir or Path.cwd()) / path
    search = [str(base_dir)] if base_dir is not None else []
    search += [p for p in sys.path if p not in search]
    spec = None
    for i, part in enumerate(ref.module.split(".")):
        spec = importlib.machinery.PathFinder.find_spec(
            ".".join(ref.module.split(".")[:i + 1]), search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    return Path(spec.origin)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def identities(spec: M.Spec, base_dir: Path | None) -> list[dict]:
    """What the run header records of each piece of code: kind, target, resolved file, SHA-256."""
    out = []
    for ref in references(spec):
        path = locate(ref, base_dir)
        if path is None or not path.is_file():
            raise CodeError(f"{ref.kind} '{ref.target}': cannot find its file to fingerprint")
        out.append({"kind": ref.kind, "target": ref.target, "file": str(path.resolve()),
                    "sha256": sha256_file(path)})
    return out


def unchanged(recorded: list | None, spec: M.Spec, base_dir: Path | None) -> list[str]:
    """Why the code a spec names is not the code a run recorded ([] when every file is found,
    where it was, with the recorded SHA-256)."""
    recorded = recorded or []
    refs = references(spec)
    by_key = {(r.get("kind"), r.get("target")): r for r in recorded if isinstance(r, dict)}
    problems = []
    for ref in refs:
        entry = by_key.get((ref.kind, ref.target))
        if entry is None:
            problems.append(f"{ref.kind} '{ref.target}' has no fingerprint in the run's header")
            continue
        path = locate(ref, base_dir)
        if path is None or not path.is_file():
            problems.append(f"{ref.kind} '{ref.target}': its file is not found any more")
        elif str(path.resolve()) != entry.get("file"):
            problems.append(f"{ref.kind} '{ref.target}' now resolves to {path.resolve()}, not "
                            f"{entry.get('file')} as when the run was trained")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{ref.kind} '{ref.target}': {path} changed since the run was "
                            "trained (its SHA-256 differs)")
    return problems


def ran_as_recorded(recorded: list | None, spec: M.Spec, base_dir: Path | None,
                    every: bool = True) -> list[str]:
    """Why the code that ran in this process for the spec is not the code a run recorded ([]
    when each piece ran from the recorded file's recorded bytes; with `every` False, a piece
    that has not run yet is no problem: it is refused before it runs, under `expecting`).
    `unchanged` looks at the files before they run; this looks at what ran, which a planted
    __pycache__ file or a module imported earlier from elsewhere could otherwise make differ."""
    problems = []
    for ref, key, want in _recorded(recorded, spec, base_dir):
        ran = EXECUTED.get(key) if key is not None else None
        if ran is None and not every:
            continue
        if ran != want:
            what = "did not run" if ran is None else f"ran from {ran[0]} (SHA-256 {ran[1][:16]}…)"
            problems.append(f"{ref.kind} '{ref.target}' {what}, not from the file and SHA-256 "
                            "the run recorded")
    return problems


def untrusted(spec: M.Spec) -> str | None:
    """Why a run's policy cannot be rolled out without trusting its code (None if it names none)."""
    refs = [ref for ref in references(spec) if ref.runs_code]
    if not refs:
        return None
    named = ", ".join(f"{r.kind} '{r.target}'" for r in refs)
    return (f"the run's spec names code ({named}); a run directory is data, and reading it never "
            "runs the code it names. Pass --trust-code (Python: trust_code=True) to run it, once "
            "its files are checked against the SHA-256 the run recorded")
