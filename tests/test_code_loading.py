"""usercode/loader.py: the code a spec names runs from the bytes it hashes (never from a
cached .pyc, never a same-named module imported from elsewhere), and EXECUTED says which."""

import hashlib
import sys

import pytest

from scpo_spec.usercode.loader import EXECUTED, load_module


@pytest.fixture
def plant(tmp_path):
    name = f"scpo_loader_probe_{abs(hash(str(tmp_path))) % 10**8}"
    path = tmp_path / f"{name}.py"
    path.write_text("VALUE = 1\n", encoding="utf-8")
    yield name, path
    sys.modules.pop(name, None)
    EXECUTED.pop(name, None)


def test_a_module_runs_from_the_bytes_it_records(plant, tmp_path):
    name, path = plant
    module = load_module(name, tmp_path)
    assert module.VALUE == 1 and sys.modules[name] is module
    assert EXECUTED[name] == (str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest())
    assert load_module(name, tmp_path) is module  # the same bytes: not run twice


def test_an_edited_module_runs_again_and_is_recorded_again(plant, tmp_path):
    name, path = plant
    load_module(name, tmp_path)
    path.write_text("VALUE = 2\n", encoding="utf-8")
    module = load_module(name, tmp_path)
    assert module.VALUE == 2
    assert EXECUTED[name][1] == hashlib.sha256(b"VALUE = 2\n").hexdigest()


def test_a_same_named_module_imported_from_elsewhere_is_not_taken(plant, tmp_path):
    name, path = plant
    impostor = type(sys)(name)
    impostor.VALUE = "impostor"
    sys.modules[name] = impostor
    assert load_module(name, tmp_path).VALUE == 1


def test_a_module_that_raises_leaves_nothing_behind(plant, tmp_path):
    name, path = plant
    path.write_text("raise RuntimeError('author bug')\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="author bug"):
        load_module(name, tmp_path)
    assert name not in sys.modules and name not in EXECUTED


def test_a_missing_module_is_module_not_found(tmp_path):
    with pytest.raises(ModuleNotFoundError):
        load_module("scpo_no_such_module_here", tmp_path)


def test_a_module_in_a_package_keeps_its_relative_imports(tmp_path):
    pkg = tmp_path / "scpo_loader_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "constants.py").write_text("DT = 0.25\n", encoding="utf-8")
    (pkg / "plant.py").write_text("from .constants import DT\nSTEP = 2 * DT\n", encoding="utf-8")
    try:
        module = load_module("scpo_loader_pkg.plant", tmp_path)
        assert module.STEP == 0.5
        assert sys.modules["scpo_loader_pkg"].plant is module
        assert EXECUTED["scpo_loader_pkg.plant"][0] == str((pkg / "plant.py").resolve())
    finally:
        for name in ("scpo_loader_pkg", "scpo_loader_pkg.plant", "scpo_loader_pkg.constants"):
            sys.modules.pop(name, None)
            EXECUTED.pop(name, None)


def test_a_package_imported_from_another_folder_is_not_taken(tmp_path):
    """Two specs in two folders, each with its own `scpo_loader_twin` package: the second gets
    its own plant, not the first one's cached import."""
    for value in (1, 2):
        pkg = tmp_path / f"spec{value}" / "scpo_loader_twin"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("", encoding="utf-8")
        (pkg / "plant.py").write_text(f"VALUE = {value}\n", encoding="utf-8")
    try:
        assert load_module("scpo_loader_twin.plant", tmp_path / "spec1").VALUE == 1
        assert load_module("scpo_loader_twin.plant", tmp_path / "spec2").VALUE == 2
        assert EXECUTED["scpo_loader_twin.plant"][0].startswith(str((tmp_path / "spec2").resolve()))
    finally:
        for name in ("scpo_loader_twin", "scpo_loader_twin.plant"):
            sys.modules.pop(name, None)
            EXECUTED.pop(name, None)


def test_a_sourceless_module_is_its_own_file_not_an_earlier_import(tmp_path):
    """A plant shipped as a .pyc alone: an impostor of the same name imported before from
    elsewhere used to be taken (importlib.import_module returns sys.modules' entry)."""
    import py_compile
    real, other = tmp_path / "real", tmp_path / "other"
    real.mkdir()
    other.mkdir()
    src = tmp_path / "scpo_loader_pyc.py"
    src.write_text("VALUE = 'real'\n", encoding="utf-8")
    py_compile.compile(str(src), cfile=str(real / "scpo_loader_pyc.pyc"), doraise=True)
    src.unlink()
    (other / "scpo_loader_pyc.py").write_text("VALUE = 'impostor'\n", encoding="utf-8")
    try:
        assert load_module("scpo_loader_pyc", other).VALUE == "impostor"
        assert load_module("scpo_loader_pyc", real).VALUE == "real"
        assert EXECUTED["scpo_loader_pyc"][0] == str((real / "scpo_loader_pyc.pyc").resolve())
    finally:
        sys.modules.pop("scpo_loader_pyc", None)
        EXECUTED.pop("scpo_loader_pyc", None)


def test_code_a_trusted_run_did_not_record_is_refused_before_it_runs(plant, tmp_path):
    from scpo_spec.usercode.loader import EXPECTED, CodeMismatch
    name, path = plant
    marker = tmp_path / "ran"
    path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n",
                    encoding="utf-8")
    EXPECTED[name] = (str(path.resolve()), "0" * 64)
    try:
        with pytest.raises(CodeMismatch, match="refusing to run it"):
            load_module(name, tmp_path)
    finally:
        EXPECTED.pop(name, None)
    assert not marker.exists() and name not in sys.modules


def test_the_specs_folder_comes_first_even_when_already_on_the_path(plant, tmp_path,
                                                                    monkeypatch):
    name, path = plant
    ahead = tmp_path / "ahead"
    ahead.mkdir()
    (ahead / f"{name}.py").write_text("VALUE = 'ahead'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ahead))
    assert load_module(name, tmp_path).VALUE == 1
