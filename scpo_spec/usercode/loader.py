"""The author's code imported and fingerprinted in one place: a module run from the bytes it is
hashed by (never from __pycache__), what ran recorded in `EXECUTED`, and, while a trusted run's
code is expected (`EXPECTED`, filled by plan/code.py's `expecting`), any other bytes refused
before they run.  Nothing here reads a spec: which code a spec names, and the identities a run's
header records of it, are plan/code.py's; TorchScript and ONNX files are read by policies/.

Importing a module or loading a file runs its author's code, so only `check` and `train` of the
author's own spec do it.  Modules are looked up in the spec's own directory first, then on the
usual `sys.path` (an installed package, PYTHONPATH): a plant module kept next to its spec just
works.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

from scpo_spec.errors import ScpoError


class CodeError(ScpoError):
    """Code a spec names cannot be found, imported or trusted."""


class CodeMismatch(CodeError):
    """A trusted run's code would run from other bytes than it recorded (never caught on the
    way up: the reader refuses the run's code, it is not a diagnostic of the spec)."""


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
