"""The language's vocabularies are registries read by every stage: the section words
(language/sections.py) and the functions (language/functions.py, their torch side in
compile/functions.py).  These tests hold the copies that cannot read them (the .lark grammar) to
the registry, and check that diagnostics carry their payload as data."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from scpo_spec.language import sections as S
from scpo_spec.language.grammar import parser
from scpo_spec.language.load import check_text, parse_model
from scpo_spec.language.yaml_writer import to_yaml_data

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "specs" / "double_integrator_safe_teacher.scpo").read_text()


def _grammar_section_words() -> set[str]:
    words: set[str] = set()
    for term in parser().terminals:
        if term.name in ("SECTION", "PROPERTY", "UNCERTAIN"):
            inner = re.fullmatch(r"\((.*)\)\\b", term.pattern.value).group(1)
            words |= set(inner.split("|"))
        elif term.name in ("SPEC", "CONST", "LET"):
            words.add(term.pattern.value)
    return words


def test_the_grammars_section_keywords_are_the_registrys():
    assert _grammar_section_words() == set(S.WORDS)


def test_the_registry_is_consistent():
    assert len(set(S.WORDS)) == len(S.WORDS) and len(set(S.KEYS)) == len(S.KEYS)
    assert {s.word for s in S.WRITTEN} == set(S.WORDS)
    assert set(S.REQUIRED) == {"system", "policy", "scenarios", "objective", "train"}
    assert [s.key for s in S.PROPERTIES] == ["constraints", "stability"]


def _errors(text: str, path: str) -> list[tuple[str, str | None, str | None, str | None]]:
    result = check_text(text, path=path)
    return [(d.message, d.hint, d.code, d.meant) for d in result.diagnostics
            if d.severity == "error"]


def _without_properties(text: str) -> str:
    return re.sub(r"^(constraint|stability) .*$", "", text, flags=re.M)


def test_a_misspelt_section_carries_what_it_meant_in_both_syntaxes():
    """.scpo writes `constraint`, its YAML twin `constraints`: the hint names each syntax's own
    word, and the payload (not the hint's text) tells the checks a property was written."""
    only_constraint = _without_properties(SPEC) + "\nconstrant c: always abs(position) <= 1.5 " \
                                                  "smoothness 50\n"
    assert _errors(only_constraint, "a.scpo") == [
        ("unknown section 'constrant'", "did you mean 'constraint'?", "unknown-section",
         "constraint")]  # and not also "no constraint or stability margin"
    data = to_yaml_data(parse_model(SPEC, "a.scpo").spec)
    for written, meant in (("constraint", "constraints"), ("constrain", "constraints"),
                           ("stabilit", "stability")):
        doc = {(written if k == meant else k): v for k, v in data.items()
               if k not in ("constraints", "stability") or k == meant}
        assert _errors(yaml.safe_dump(doc, sort_keys=False), "a.yaml") == [
            (f"unknown section '{written}'", f"did you mean '{meant}'?", "unknown-section",
             meant)], written


def test_a_misspelt_required_section_is_not_also_missing():
    for text, path in ((SPEC.replace("system linear", "sytem linear"), "a.scpo"),):
        assert _errors(text, path) == [("unknown section 'sytem'", "did you mean 'system'?",
                                        "unknown-section", "system")]
    data = to_yaml_data(parse_model(SPEC, "a.scpo").spec)
    data = {("trian" if k == "train" else k): v for k, v in data.items()}
    assert _errors(yaml.safe_dump(data, sort_keys=False), "a.yaml") == [
        ("unknown section 'trian'", "did you mean 'train'?", "unknown-section", "train")]


def test_no_message_is_parsed_back():
    """A diagnostic's or an evaluation error's reason is data (`code`, `meant`, `unknown`,
    `arithmetic`): no module splits a message or hint on its quotes or tests how it starts."""
    pattern = re.compile(r"""split\((["'])\\?'\1\)|(message|hint)\.(split|startswith)\(""")
    offenders = [f"{p.relative_to(ROOT)}: {m.group()}" for p in (ROOT / "scpo_spec").rglob("*.py")
                 for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert offenders == []


# --------------------------------------------------------------------------- functions
def _calls(f) -> list[str]:
    """Calls of `f` over the signals x, y, z (and a constant matrix P), one per form it has."""
    if f.shape == "elementwise":
        return [f"{f.name}({', '.join('xyz'[:f.arity])})"]
    if f.shape == "reduce":
        return [f"{f.name}(x, y, z)", f"{f.name}(x, y)", f"{f.name}([x, y, z])"]
    if f.shape == "norm":
        return [f"{f.name}([x, y, z])"]
    if f.shape == "quad":
        return [f"{f.name}(P, [x, y])"]
    return []  # lyapunov reads a whole rollout (tests/test_stl.py); diag, eye: numbers only


def test_every_function_has_a_torch_implementation_that_agrees_with_numpy():
    """Each formula function, compiled by the torch expression compiler that declared equations
    and metrics share, against the registry's numpy implementation (the oracle) on random
    arguments, negative ones included (where numpy refuses — log, sqrt — that point is
    skipped)."""
    import numpy as np
    import torch

    from scpo_spec.language import functions as FN
    from scpo_spec.language.evaluate import EvalError, evaluate
    from scpo_spec.language.scpo_reader import parse_expression
    from scpo_spec.language.source import Source
    from scpo_spec.systems.declared import EquationCompiler
    from tests.numerics import assert_close_across_paths

    P = [[2.0, 0.5], [0.5, 1.0]]
    rng = np.random.default_rng(7)
    points = np.concatenate([rng.uniform(-3, 3, (200, 3)), rng.uniform(0.05, 3, (50, 3))])
    covered = set()
    for f in FN.FUNCTIONS:
        for text in _calls(f):
            tree, problems = parse_expression(text, Source(path="<t>", text=text))
            assert tree is not None and not problems, text
            compiled = EquationCompiler(["x", "y", "z"], [], {"P": P}).value(tree)
            x = torch.as_tensor(points, dtype=torch.float64)
            got = compiled((x, torch.zeros(len(points), 0, dtype=torch.float64), [None] * 8,
                            None)).numpy()
            got = np.broadcast_to(got, (len(points),))
            checked = 0
            for i, (a, b, c) in enumerate(points):
                try:
                    want = evaluate(tree, {"x": a, "y": b, "z": c, "P": P})
                except EvalError:
                    continue
                assert_close_across_paths(got[i], want, f"{text} at {(a, b, c)}")
                checked += 1
            assert checked >= 50, text
            covered.add(f.name)
    assert covered == set(FN.SIGNAL_FUNCTIONS) - {"lyapunov"}


def test_the_language_server_offers_and_explains_each_function_from_the_registry():
    from scpo_spec.language import functions as FN
    from scpo_spec.lsp.analysis import hover

    line = "constraint c: always atan2(p, 1) <= 1"
    assert hover([line], 0, line.index("atan2") + 1, None, None) == \
        f"`atan2(y, x)`: {FN.BY_NAME['atan2'].doc}"


# --------------------------------------------------------------------------- atan, the example
def _skid() -> str:
    doc = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    start = doc.index('spec skid "')
    return doc[start:doc.index("```", start)]


def test_atan_folds_in_numbers_like_numpys_arctan():
    import numpy as np

    from scpo_spec.language.load import check_text as check

    rng = np.random.default_rng(3)
    values = [*rng.uniform(-50, 50, 20), 0.0, 1e300, -1e-300]
    consts = "\n".join(f"const c{i} = atan({float(v)!r})" for i, v in enumerate(values))
    result = check(_skid() + consts + "\nconst v3 = atan([1, -2, 3])\n", path="s.scpo")
    assert result.ok, [d.headline() for d in result.diagnostics]
    folded = {c.name: c.value.value for c in result.spec.consts}
    for i, v in enumerate(values):
        assert abs(folded[f"c{i}"] - np.arctan(v)) <= 1e-15, v
    np.testing.assert_allclose(folded["v3"], np.arctan([1, -2, 3]), rtol=0, atol=1e-15)


def test_atan_is_typed_and_refused_like_the_other_elementwise_functions():
    skid = _skid()
    assert _errors(skid + "const bad = atan(1, 2)\n", "s.scpo") == [
        ("constant 'bad': atan takes exactly one argument", None, None, None)]
    wrong = skid.replace("always abs(atan(v)) <= 1.2", "always abs(atan(v, 1)) <= 1.2")
    assert [m for m, *_ in _errors(wrong, "s.scpo")] == ["atan takes exactly one argument"]
    vector = skid.replace("always abs(atan(v)) <= 1.2", "always max(abs(atan(state))) <= 1.2")
    assert _errors(vector, "s.scpo") == []  # elementwise over a vector, like tanh


def test_atan_in_a_declared_equation_steps_like_its_numpy_oracle():
    import numpy as np
    import torch

    from scpo_spec.language.load import check_text as check
    from scpo_spec.systems.declared import compile_declared

    text = _skid().replace("next v = v + dt * (clip(f, -5, 5) - 0.2 * tanh(10 * v))",
                           "next v = v + dt * (3 * atan(f / 3) - 0.2 * tanh(10 * v))")
    result = check(text, path="s.scpo")
    assert result.ok, [d.headline() for d in result.diagnostics]
    step = compile_declared(result.spec)
    rng = np.random.default_rng(5)
    x, u = rng.uniform(-2, 2, (64, 2)), rng.uniform(-20, 20, (64, 1))
    got = step(torch.as_tensor(x), torch.as_tensor(u)).numpy()
    dt = 0.05
    want = np.stack([x[:, 0] + dt * x[:, 1],
                     x[:, 1] + dt * (3 * np.arctan(u[:, 0] / 3) - 0.2 * np.tanh(10 * x[:, 1]))],
                    axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_unknown_words_carry_their_code_and_what_they_meant():
    cases = [
        (SPEC.replace("abs(position)", "abz(position)"), "unknown-function", "abs",
         "unknown function 'abz'"),
        (SPEC.replace("abs(position)", "abs(positon)"), "unknown-name", "position",
         "unknown name 'positon'"),
        (SPEC.replace("activation = tanh", "activation = tahn"), "unknown-choice", "tanh",
         "unknown activation 'tahn'"),
        (SPEC.replace("policy mlp {", "policy mlq {"), "unknown-kind", "mlp",
         "unknown policy kind 'mlq'"),
        (SPEC.replace("residual = backup", "residul = backup"), "unknown-entry", "residual",
         "unknown entry 'residul' in policy mlp"),
    ]
    for text, code, meant, message in cases:
        found = _errors(text, "a.scpo")
        assert found == [(message, f"did you mean '{meant}'?", code, meant)], found


def test_the_rooms_that_implement_a_word_list_implement_exactly_it():
    """language/words.py is the one list; the implementations downstream are held to it."""
    import torch

    from scpo_spec.compile.projection import SOLVERS as SOLVER_NAMES
    from scpo_spec.language import words
    from scpo_spec.policies.activations import ACTIVATIONS, MODULES
    from scpo_spec.systems.declared import _integrator
    assert set(ACTIVATIONS) == set(MODULES) == set(words.ACTIVATIONS)
    assert set(SOLVER_NAMES) == set(words.SOLVERS)
    x = torch.tensor([[1.0]], dtype=torch.float64)
    for method in words.INTEGRATORS:  # each word integrates ẋ = −x to within its order
        step = _integrator(lambda x, u, w=None: -x, 0.01, 1, method)
        assert abs(step(x, None).item() - 0.99004983374916811) < 1e-4
