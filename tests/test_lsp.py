"""`scpo lsp` driven as an editor drives it: `python -m scpo_spec.cli lsp` in a subprocess, spoken
to in JSON-RPC with Content-Length framing over its pipes (no pygls on this side, so the wire
format itself is under test).  Every answer is compared with what the checker, the formatter and
`scpo compile --emit metrics` say, at positions computed from the text."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scpo_spec.language.words import ACTIVATIONS, SOLVERS
from scpo_spec.language.sections import WORDS as SECTION_WORDS
from scpo_spec.language.load import check_text
from scpo_spec.lsp.analysis import KEYWORD_DOCS
from scpo_spec.lsp.server import DEBOUNCE

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "specs" / "double_integrator.scpo").read_text()


class Client:
    """A minimal LSP client: requests wait for their answer; notifications queue up."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "scpo_spec.cli", "lsp"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.notes: queue.Queue = queue.Queue()
        self.answers: dict[int, dict] = {}
        self.arrived = threading.Condition()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if not line.strip():
                    break
                key, _, value = line.decode("ascii").partition(":")
                if key.lower() == "content-length":
                    length = int(value)
            message = json.loads(out.read(length))
            if "id" in message and "method" not in message:
                with self.arrived:
                    self.answers[message["id"]] = message
                    self.arrived.notify_all()
            else:
                self.notes.put(message)

    def send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def request(self, method: str, params: dict, timeout: float = 15):
        self.next_id += 1
        ident = self.next_id
        self.send({"id": ident, "method": method, "params": params})
        with self.arrived:
            assert self.arrived.wait_for(lambda: ident in self.answers, timeout), method
            answer = self.answers.pop(ident)
        assert "error" not in answer, answer
        return answer["result"]

    def notify(self, method: str, params: dict) -> None:
        self.send({"method": method, "params": params})

    def diagnostics(self, uri: str, timeout: float = 15) -> dict:
        """The next publishDiagnostics for `uri`."""
        end = time.monotonic() + timeout
        while True:
            note = self.notes.get(timeout=max(end - time.monotonic(), 0.01))
            if note["method"] == "textDocument/publishDiagnostics" and \
                    note["params"]["uri"] == uri:
                return note["params"]


@pytest.fixture(scope="module")
def lsp():
    client = Client()
    result = client.request("initialize", {"processId": None, "rootUri": None,
                                           "capabilities": {}})
    caps = result["capabilities"]
    assert caps["hoverProvider"] and caps["definitionProvider"]
    assert caps["documentSymbolProvider"] and caps["documentFormattingProvider"]
    assert caps["textDocumentSync"]["save"]
    client.notify("initialized", {})
    yield client
    client.request("shutdown", None)
    client.notify("exit", None)
    assert client.proc.wait(timeout=10) == 0
    client.proc.stderr.close()


def open_doc(lsp: Client, path: Path, text: str) -> tuple[str, dict]:
    uri = path.resolve().as_uri()
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "scpo",
                                                         "version": 1, "text": text}})
    return uri, lsp.diagnostics(uri)


def at(text: str, needle: str, offset: int = 0, occurrence: int = 0) -> dict:
    """The 0-based LSP position of `needle`'s (n-th) occurrence, plus `offset` characters."""
    index = -1
    for _ in range(occurrence + 1):
        index = text.index(needle, index + 1)
    index += offset
    line = text.count("\n", 0, index)
    return {"line": line, "character": index - (text.rfind("\n", 0, index) + 1)}


def test_diagnostics_on_open_then_cleared_by_the_fix(lsp, tmp_path):
    """An error is published where `scpo check` puts it (1-based span → 0-based range), with its
    hint; the edit that fixes it publishes an empty list for the new version."""
    bad = SPEC.replace("activation = tanh", "activation = tanhh")
    uri, published = open_doc(lsp, tmp_path / "di.scpo", bad)
    assert published["version"] == 1
    [d] = published["diagnostics"]
    [expected] = check_text(bad, path=str(tmp_path / "di.scpo")).diagnostics
    start = at(bad, "tanhh")
    assert d["range"] == {"start": start, "end": {**start, "character": start["character"] + 5}}
    assert d["range"]["start"]["line"] == expected.span.line - 1
    assert d["message"] == f"{expected.message}\nhint: {expected.hint}"
    assert "unknown activation 'tanhh'" in d["message"] and "did you mean 'tanh'" in d["message"]
    assert d["severity"] == 1 and d["source"] == "scpo"

    end = {**start, "character": start["character"] + 5}
    lsp.notify("textDocument/didChange", {
        "textDocument": {"uri": uri, "version": 2},
        "contentChanges": [{"range": {"start": start, "end": end}, "text": "tanh"}]})
    fixed = lsp.diagnostics(uri)
    assert fixed == {"uri": uri, "version": 2, "diagnostics": []}


def test_typing_is_debounced_and_the_latest_version_wins(lsp, tmp_path):
    """Three quick edits give one check, of the last version, DEBOUNCE after the last edit."""
    uri, first = open_doc(lsp, tmp_path / "typing.scpo", SPEC)
    assert first["diagnostics"] == []
    where = at(SPEC, "horizon 60", len("horizon "))
    sent = time.monotonic()
    for version, digit in ((2, "7"), (3, "8"), (4, "9")):  # horizon 60 → 70 → 80 → 90
        lsp.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": where, "end": {
                **where, "character": where["character"] + 1}}, "text": digit}]})
    published = lsp.diagnostics(uri)
    assert time.monotonic() - sent >= DEBOUNCE
    assert published["version"] == 4
    # the settle window [40:60] now ends before the horizon 90: still valid, no diagnostics
    assert published["diagnostics"] == []
    time.sleep(DEBOUNCE + 0.5)
    assert lsp.notes.empty()  # versions 2 and 3 were never published


def test_a_warning_is_a_warning(lsp, tmp_path):
    text = SPEC.replace("holdout 1000", "holdout 100")
    _, published = open_doc(lsp, tmp_path / "warn.scpo", text)
    [d] = published["diagnostics"]
    assert d["severity"] == 2 and d["message"].startswith("holdout 100 bounds P(violation)")
    value = at(text, "holdout 100", len("holdout "))
    assert d["range"] == {"start": value, "end": {**value, "character": value["character"] + 3}}


def test_hover_signal_constant_metric_keyword(lsp, tmp_path):
    text = SPEC.replace("const dt = 0.1", "const dt = 0.1\nconst half_dt2 = 0.5 * dt^2")
    uri, _ = open_doc(lsp, tmp_path / "hover.scpo", text)

    def hover(position):
        result = lsp.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                    "position": position})
        return result and result["contents"]["value"]

    # a signal used in a formula: its role and index
    shown = hover(at(text, "abs(velocity", len("abs(v")) if "abs(velocity" in text else
                  at(text, "state position, velocity", len("state position, v")))
    assert "velocity" in shown and "state 1 of 2" in shown and "x[1]" in shown
    assert "input 0 of 1" in hover(at(text, "force in [-4", 1))
    # a constant: as written and folded
    assert "0.5 * dt^2" in hover(at(text, "half_dt2", 2)) and "(= 0.005)" in \
        hover(at(text, "half_dt2", 2))
    # a metric: what `scpo compile --emit metrics` prints for it
    metric = hover(at(text, "position_limit", 3))
    assert "g = max_{scenarios} max_{t∈[0:60]} (abs(position) − 1.5)" in metric
    settle = hover(at(text, "settle:", 2))
    assert "g = max_{scenarios} min_{t∈[40:60]} (norm(state) − 0.1)" in settle
    # a section keyword
    assert hover(at(text, "\nscenarios {", 1)) == KEYWORD_DOCS["scenarios"]
    assert hover(at(text, "# Discrete-time", 4)) is None  # comments say nothing


def test_completion_fits_where_the_cursor_is(lsp, tmp_path):
    """Each request comes right after the keystroke (before the debounced check), with the text
    half-typed, as in an editor."""
    uri, _ = open_doc(lsp, tmp_path / "complete.scpo", SPEC)
    version = 1

    def labels(text, position):
        nonlocal version
        version += 1
        lsp.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                              "contentChanges": [{"text": text}]})
        result = lsp.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                         "position": position})
        return [item["label"] for item in result["items"]]

    typed = SPEC.replace("always force in [-4, 4]", "always abs(f")
    formula = labels(typed, at(typed, "always abs(f", len("always abs(f")))
    assert {"position", "velocity", "force", "state", "input", "dt", "abs", "norm",
            "eventually"} <= set(formula)
    assert "system" not in formula and "tanh" in formula  # a function, not the activation
    typed = SPEC.replace("solver clarabel", "solver ")
    assert labels(typed, at(typed, "solver ", len("solver "))) == list(SOLVERS)
    typed = SPEC.replace("activation = tanh", "activation = ")
    assert labels(typed, at(typed, "activation = ", len("activation = "))) == list(ACTIVATIONS)
    typed = SPEC.replace("optimizer sgd", "optimizer s")
    assert labels(typed, at(typed, "optimizer s", len("optimizer s"))) == ["sgd", "adam"]
    assert labels(SPEC, at(SPEC, "\nspec ", 1)) == list(SECTION_WORDS)  # a top-level item
    assert labels(SPEC, at(SPEC, "    input force", 4)) == ["state", "input", "A", "B",
                                                          "equilibrium"]
    assert labels(SPEC, at(SPEC, "# Discrete", 5)) == []
    lsp.diagnostics(uri)  # the debounced check of the last version


def test_definition_lands_on_the_const_line(lsp, tmp_path):
    uri, _ = open_doc(lsp, tmp_path / "def.scpo", SPEC)
    where = lsp.request("textDocument/definition", {"textDocument": {"uri": uri},
                                                    "position": at(SPEC, "[[1, dt]", 5)})
    const = at(SPEC, "const dt", len("const "))
    assert where == {"uri": uri, "range": {"start": const, "end": {
        **const, "character": const["character"] + 2}}}
    signal = lsp.request("textDocument/definition", {"textDocument": {"uri": uri},
                                                     "position": at(SPEC, "abs(position)", 5)})
    assert signal["range"]["start"] == at(SPEC, "state position", len("state "))


def test_document_symbols_outline_the_spec(lsp, tmp_path):
    uri, _ = open_doc(lsp, tmp_path / "outline.scpo", SPEC)
    symbols = lsp.request("textDocument/documentSymbol", {"textDocument": {"uri": uri}})
    assert [(s["name"], s["kind"]) for s in symbols] == [
        ("double_integrator", 2), ("dt", 14), ("system linear", 3), ("backup lqr", 3),
        ("policy mlp", 3), ("scenarios", 3), ("position_limit", 7), ("force_limit", 7),
        ("settle", 7), ("margin", 7), ("objective imitation", 3), ("train", 3)]
    system = symbols[2]
    assert [(c["name"], c["detail"]) for c in system["children"]] == [
        ("position", "state 0"), ("velocity", "state 1"), ("force", "input 0")]
    assert system["range"]["start"] == at(SPEC, "system linear")
    assert system["range"]["end"]["line"] == at(SPEC, "}\n\n# Discrete")["line"]


def test_formatting_is_scpo_fmt_and_refuses_errors(lsp, tmp_path):
    messy = SPEC.replace("const dt = 0.1", "const   dt=0.1").replace(
        "    steps 150", "  steps   150")
    path = tmp_path / "messy.scpo"
    path.write_text(messy)
    uri, _ = open_doc(lsp, path, messy)
    options = {"tabSize": 4, "insertSpaces": True}
    [edit] = lsp.request("textDocument/formatting", {"textDocument": {"uri": uri},
                                                     "options": options})
    fmt = subprocess.run([sys.executable, "-m", "scpo_spec.cli", "fmt", str(path)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert edit["newText"] == fmt and "const dt = 0.1" in fmt and "\n    steps 150" in fmt
    assert edit["range"]["start"] == {"line": 0, "character": 0}
    assert edit["range"]["end"] == {"line": messy.count("\n"), "character": 0}

    broken, _ = open_doc(lsp, tmp_path / "broken.scpo", messy.replace("tanh", "tanhh"))
    assert lsp.request("textDocument/formatting", {"textDocument": {"uri": broken},
                                                   "options": options}) == []


def test_code_checks_run_on_save_only(lsp, tmp_path):
    """A python plant that returns a list passes the language checks (open, typing) and fails
    the code check that `scpo check` runs after them: on save."""
    (tmp_path / "plant.py").write_text("def f(x, u):\n    return x.tolist()\n")
    text = SPEC.replace("system linear {", 'system python "plant:f" {')
    text = "\n".join(line for line in text.splitlines()
                     if not line.lstrip().startswith(("A = ", "B = "))) + "\n"
    path = tmp_path / "py.scpo"
    path.write_text(text)
    uri, opened = open_doc(lsp, path, text)
    assert opened["diagnostics"] == []
    lsp.notify("textDocument/didSave", {"textDocument": {"uri": uri}})
    [d] = lsp.diagnostics(uri, timeout=60)["diagnostics"]
    assert "returned a list, not a torch tensor" in d["message"]
    assert d["range"]["start"] == at(text, '"plant:f"')


# ---- LANGUAGE-v3: lets, parameters, disturbances and the new entry words ----
V3_SPEC = """\
spec hover "v3 names"
const m = 1.5
const g = 9.81
parameter drag in [0.05, 0.15]
disturbance gust in [-0.2, 0.2]
let thrust = T1 + T2
let climb = thrust / m - g
system ode {
    state z, zd
    input T1, T2
    dt = 0.02
    der z = zd
    der zd = climb - drag * zd + gust
    equilibrium { T1 = m * g / 2  T2 = m * g / 2 }
}
backup lqr { Q = diag(10, 1)  R = diag(0.1, 0.1) }
policy mlp { hidden = [16]  residual = backup  observe = [z, zd]  output_scale = [0.5, 0.5] }
scenarios { initial z in [-0.5, 0.5]  initial zd in [-0.2, 0.2]  count 16  horizon 50 }
constraint altitude: always abs(z) + 0 * climb <= 1 smoothness 20
objective cost { stage z^2 }
train { steps 2 optimizer sgd { lr = 0.01 } directions 4 perturbation 1e-3 radius 0.05
        margin 1e-6 verify every 1 }
verify { cells 64 }
"""


def _v3(text: str = V3_SPEC):
    from scpo_spec.language.load import parse_model
    return text.splitlines(), parse_model(text, path="v3.scpo").spec


def _pos(text: str, needle: str, offset: int = 0, occurrence: int = 0) -> tuple[int, int]:
    p = at(text, needle, offset, occurrence)
    return p["line"], p["character"]


def test_v3_hover_lets_parameters_disturbances_and_entry_words():
    from scpo_spec.lsp.analysis import ENTRY_DOCS, hover
    lines, spec = _v3()
    checked = check_text(V3_SPEC, path="v3.scpo")
    assert checked.ok, [d.headline() for d in checked.diagnostics]
    said = hover(lines, *_pos(V3_SPEC, "climb - drag", 1), spec, checked)
    assert said == "```scpo\nlet climb = thrust / m - g\n```\n= `(T1 + T2) / m - g`"
    assert hover(lines, *_pos(V3_SPEC, "thrust = T1", 1), spec, checked) == \
        "```scpo\nlet thrust = T1 + T2\n```"
    said = hover(lines, *_pos(V3_SPEC, "drag * zd", 1), spec, checked)
    assert said.startswith("```scpo\nparameter drag in [0.05, 0.15]\n```\nan uncertain number, "
                           "one value per scenario")
    said = hover(lines, *_pos(V3_SPEC, "gust\n", 1), spec, checked)
    assert said.startswith("```scpo\ndisturbance gust in [-0.2, 0.2]\n```\nan uncertain input, a "
                           "fresh value at every step")
    for word in ("equilibrium", "observe", "output_scale", "cells", "every"):
        assert hover(lines, *_pos(V3_SPEC, word, 1), spec, checked) == ENTRY_DOCS[word], word
    assert hover(lines, *_pos(V3_SPEC, "\nverify {", 2), spec, checked) == KEYWORD_DOCS["verify"]
    assert hover(lines, *_pos(V3_SPEC, "\nlet thrust", 2), spec, checked) == KEYWORD_DOCS["let"]
    metric = hover(lines, *_pos(V3_SPEC, "altitude", 1), spec, checked)
    assert "compiled: `g = max_{scenarios} max_{t∈[0:49]} " \
           "(abs(z) + 0 * ((T1 + T2) / m - g) − 1)`" in metric, metric  # lets expanded


def test_v3_definition_of_lets_parameters_and_disturbances():
    from scpo_spec.lsp.analysis import definition
    lines, spec = _v3()
    for use, defined in (("climb - drag", "climb = thrust"), ("thrust / m", "thrust = T1"),
                         ("drag * zd", "drag in"), ("gust\n", "gust in")):
        span = definition(lines, *_pos(V3_SPEC, use, 1), spec)
        assert (span.line - 1, span.column - 1) == _pos(V3_SPEC, defined), use
    span = definition(lines, *_pos(V3_SPEC, "T1 = m", 0), spec)  # an equilibrium's signal
    assert (span.line - 1, span.column - 1) == _pos(V3_SPEC, "T1, T2")


def test_v3_completion_offers_the_names_each_place_may_use():
    from scpo_spec.lsp.analysis import completion

    def labels(text, needle, offset):
        lines, _ = _v3(text)
        return [i.label for i in completion(lines, *_pos(text, needle, offset), _v3()[1])]
    formula = labels(V3_SPEC, "always abs(z)", len("always "))
    assert {"thrust", "climb", "drag", "gust", "z", "T1"} <= set(formula)
    observe = labels(V3_SPEC, "observe = [z", len("observe = ["))
    assert {"z", "zd", "drag", "thrust"} <= set(observe)
    assert not {"T1", "T2", "gust"} & set(observe)  # a controller sees no inputs, no disturbances
    inside = V3_SPEC.replace("equilibrium { T1 = m * g / 2  T2 = m * g / 2 }", "equilibrium {\n"
                             "        \n    }")
    assert labels(inside, "equilibrium {\n        ", len("equilibrium {\n        ")) == [
        "z", "zd", "T1", "T2"]
    let_value = labels(V3_SPEC, "let climb = ", len("let climb = "))
    assert {"thrust", "z", "T1", "drag", "gust", "m"} <= set(let_value)
    verify = V3_SPEC.replace("verify { cells 64 }", "verify {\n    \n}")
    assert labels(verify, "verify {\n    ", len("verify {\n    ")) == ["cells", "time_limit"]
    train = V3_SPEC.replace("margin 1e-6 verify every 1 }", "margin 1e-6\n    \n}")
    assert "verify every" in labels(train, "margin 1e-6\n    ", len("margin 1e-6\n    "))
    policy = V3_SPEC.replace("policy mlp { hidden = [16]", "policy mlp {\n    \n hidden = [16]")
    assert {"observe", "output_scale"} <= set(labels(policy, "policy mlp {\n    ",
                                                     len("policy mlp {\n    ")))
    backup = labels(V3_SPEC.replace("backup lqr", "backup "), "backup ", len("backup "))
    assert backup == ["lqr", "linear", "torch", "onnx"]
    policies = labels(V3_SPEC.replace("policy mlp", "policy "), "policy ", len("policy "))
    assert policies == ["mlp", "linear", "torch", "onnx", "python", "from"]


def test_v3_outline_lists_lets_parameters_disturbances_and_verify():
    from scpo_spec.lsp.analysis import symbols
    names = [(s.name, s.detail) for s in symbols(_v3()[1])]
    assert names[:7] == [("hover", "spec"), ("m", "1.5"), ("g", "9.81"),
                         ("drag", "parameter in [0.05, 0.15]"), ("gust", "disturbance in [-0.2, 0.2]"),
                         ("thrust", "let = T1 + T2"), ("climb", "let = thrust / m - g")]
    assert names[-1] == ("verify", None)


def test_v3_hover_through_the_server(lsp, tmp_path):
    uri, published = open_doc(lsp, tmp_path / "v3.scpo", V3_SPEC)
    assert published["diagnostics"] == []
    said = lsp.request("textDocument/hover", {"textDocument": {"uri": uri},
                                              "position": at(V3_SPEC, "climb - drag", 1)})
    assert "let climb = thrust / m - g" in said["contents"]["value"]
    where = lsp.request("textDocument/definition", {"textDocument": {"uri": uri},
                                                    "position": at(V3_SPEC, "drag * zd", 1)})
    assert where["range"]["start"] == at(V3_SPEC, "drag in")
