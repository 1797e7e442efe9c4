"""Document tree → typed model.  Structural errors (unknown sections, entries and kinds, values
of the wrong sort, duplicates) are reported here, each with its location; cross-references and
ranges are left to check.py."""

from __future__ import annotations

import math
from typing import Any, Callable

from scpo_spec.language import expr as E
from scpo_spec.language import model as M
from scpo_spec.language import sections as S
from scpo_spec.language.diagnostics import Collector, closest, did_you_mean, meant_hint, one_of
from scpo_spec.language.document import Entry, Map, Scalar, Seq, Value
from scpo_spec.language.evaluate import EvalError, evaluate, to_plain
from scpo_spec.language.scpo_reader import parse_expression
from scpo_spec.language.fields import field_tables
from scpo_spec.language.source import Source, Span


class Builder:
    def __init__(self, source: Source, diagnostics: Collector):
        self.source = source
        self.diag = diagnostics
        self.consts: dict[str, Any] = {}
        # sections/blocks written but not built (already reported): checks do not call them missing
        self.failed: set[str] = set()
        self._tables: dict | None = None

    # ------------------------------------------------------------------ value converters
    def expr(self, value: Value, what: str) -> E.Node | None:
        """Any value as an expression tree (YAML strings are parsed here, in place); a literal
        beyond float range is an error here, so no later stage ever sees an infinite number."""
        tree = self._expr(value, what)
        if tree is not None:
            for node in E.walk(tree):
                if isinstance(node, E.Num) and not math.isfinite(node.value):
                    self.diag.error("number too large", node.span,
                                    "numbers must fit a 64-bit float (about 1.8e308)")
                    return None
        return tree

    def _expr(self, value: Value, what: str) -> E.Node | None:
        if isinstance(value, Scalar):
            if value.expr is not None:
                return value.expr
            raw = value.raw
            if isinstance(raw, bool) or raw is None:
                self.diag.error(f"{what}: expected a value, got {str(raw).lower()}", value.span)
                return None
            if isinstance(raw, (int, float)):
                try:
                    number = float(raw)
                except OverflowError:
                    number = float("inf")
                return E.Num(value=number, span=value.span)
            if isinstance(raw, str):
                line = value.span.line if value.span else 1
                col = (value.span.column + (1 if value.quoted else 0)) if value.span else 1
                tree, diags = parse_expression(raw, self.source, line, col)
                for d in diags:
                    self.diag.items.append(d)
                return tree
            self.diag.error(f"{what}: unsupported value {raw!r}", value.span)
            return None
        if isinstance(value, Seq):
            items = [self._expr(i, what) for i in value.items]
            if any(i is None for i in items):
                return None
            return E.Vector(items=items, span=value.span)
        self.diag.error(f"{what}: expected a value, not a block", value.span)
        return None

    def quantity(self, value: Value, what: str) -> M.Quantity | None:
        tree = self.expr(value, what)
        if tree is None:
            return None
        if isinstance(tree, E.FORMULA_NODES) or isinstance(tree, E.Str):
            sort = "a string" if isinstance(tree, E.Str) else "a formula"
            self.diag.error(f"{what}: expected a number, got {sort}", tree.span)
            return None
        folded = None
        try:
            folded = to_plain(evaluate(tree, self.consts))
        except EvalError as err:
            hint, name = err.hint, err.unknown
            if name is not None and f"const {name}" in self.failed:
                return M.Quantity(expr=tree, value=None, span=tree.span)  # said at the const
            if name is not None:
                hint = did_you_mean(name, self.consts) or hint
            self.diag.error(f"{what}: {err.message}", err.span or tree.span, hint)
        return M.Quantity(expr=tree, value=folded, span=tree.span)

    def formula(self, value: Value, what: str) -> E.Node | None:
        return self.expr(value, what)

    def word(self, value: Value, what: str) -> tuple[str, Span | None] | None:
        """A bare word (or a string holding one)."""
        tree = self.expr(value, what)
        if tree is None:
            return None
        if isinstance(tree, E.Name):
            return tree.id, tree.span
        if isinstance(tree, E.Str) and tree.value.isidentifier():
            return tree.value, tree.span
        self.diag.error(f"{what}: expected a name", tree.span)
        return None

    def ident(self, choices: tuple[str, ...]) -> Callable[[Value, str], M.Ident | None]:
        def convert(value: Value, what: str) -> M.Ident | None:
            got = self.word(value, what)
            if got is None:
                return None
            word, span = got
            if word not in choices:
                self.diag.unknown(f"unknown {what} '{word}'", span, word, choices,
                                  f"expected one of {one_of(choices)}", code="unknown-choice")
                return None
            return M.Ident(name=word, span=span)
        convert.choices = choices  # the words an editor offers for this entry (vocabulary())
        return convert

    def text(self, value: Value, what: str) -> M.Text | None:
        if isinstance(value, Scalar) and value.expr is None and isinstance(value.raw, str):
            return M.Text(value=value.raw, span=value.span)
        tree = self.expr(value, what)
        if isinstance(tree, E.Str):
            return M.Text(value=tree.value, span=tree.span)
        if tree is not None:
            self.diag.error(f"{what}: expected a quoted string", tree.span)
        return None

    def signals(self, value: Value, what: str) -> list[M.Signal]:
        if isinstance(value, Scalar) and isinstance(value.raw, str) and "," in value.raw:
            value = Seq(span=value.span, items=[  # YAML `state: "a, b"` means [a, b]
                Scalar(span=value.span, raw=part.strip()) for part in value.raw.split(",")])
        items = value.items if isinstance(value, Seq) else [value]
        out = []
        for item in items:
            tree = self.expr(item, what)
            if isinstance(tree, E.Vector):  # `[a, b]` written as one value
                trees = tree.items
            else:
                trees = [tree]
            for t in trees:
                if isinstance(t, E.Name):
                    out.append(M.Signal(name=t.id, span=t.span))
                elif t is not None:
                    self.diag.error(f"{what}: expected a signal name", t.span)
        return out

    def equations(self, value: Value, what: str) -> list[M.Equation] | None:
        """`next p = …  next v = …` (.scpo) or `next: {p: "…", v: "…"}` (YAML): one equation per
        state, in the order written.  A second equation for one state is reported here, where it
        is written (the YAML twin, a mapping, could not hold both)."""
        if not isinstance(value, Map):
            self.diag.error(f"`{what}` holds equations: write `{what} STATE = EXPRESSION`, one "
                            "per state", getattr(value, "span", None),
                            f'in YAML: `{what}: {{p: "p + dt * v", v: "…"}}`')
            self.failed.add(f"{what} *")  # written, though not as equations: none "missing"
            return None
        out: list[M.Equation] = []
        seen: dict[str, Entry] = {}
        for entry in value.entries:
            if entry.key in seen:
                first = seen[entry.key].key_span
                self.diag.error(f"two equations for state '{entry.key}'", entry.key_span,
                                f"the first is at line {first.line}; a state has exactly one "
                                f"`{what}` equation" if first else None)
                continue
            seen[entry.key] = entry
            tree = self.expr(entry.value, f"the {what} equation of '{entry.key}'")
            if tree is None:
                self.failed.add(f"{what} {entry.key}")  # written, though broken: not "missing"
                continue
            span = entry.key_span.to(tree.span) if entry.key_span and tree.span else \
                entry.key_span
            out.append(M.Equation(state=M.Signal(name=entry.key, span=entry.key_span),
                                  expr=tree, span=span))
        return out

    def _written_equations(self, block: Value) -> None:
        """Equations under a wrong or misspelt word (`der` in a discrete system, `nxt p = …`)
        were reported where written: their states are not also 'missing an equation'."""
        if not isinstance(block, Map):
            return
        for entry in block.entries:
            if entry.key not in ("next", "der") and isinstance(entry.value, Map) and not any(
                    e.key == "kind" for e in entry.value.entries):
                for target in entry.value.entries:
                    self.failed |= {f"next {target.key}", f"der {target.key}"}
            elif entry.key in ("next", "der") and isinstance(entry.value, Map):
                other = "der" if entry.key == "next" else "next"
                self.failed |= {f"{other} {t.key}" for t in entry.value.entries}

    def observe(self, value: Value, what: str) -> list[E.Node] | None:
        """`observe = [v_set, x_lead - x_ego]`: the network's input, one expression each (their
        names are checked later, with every name the spec declares)."""
        tree = self.expr(value, what)
        if tree is None:
            return None
        items = tree.items if isinstance(tree, E.Vector) else [tree]
        if not items:
            self.diag.error(f"{what} is empty", tree.span,
                            "list what the network sees, e.g. `observe = [x, v]`; leave "
                            "`observe` out for the default x − x*")
            return None
        return items

    def assignments(self, value: Value, what: str) -> list[M.Assignment] | None:
        """`equilibrium { T1 = m * g / 2  T2 = m * g / 2 }` (.scpo) or `equilibrium: {T1: …}`
        (YAML): a value per named state or input, folded with the constants."""
        if not isinstance(value, Map) or any(e.key == "kind" for e in value.entries):
            self.diag.error(f"`{what}` is a block of `NAME = VALUE` entries",
                            getattr(value, "span", None),
                            f"write `{what} {{ T1 = m * g / 2  T2 = m * g / 2 }}`; states and "
                            "inputs not named are 0")
            self.failed.add(what)
            return None
        out: list[M.Assignment] = []
        for entry in value.entries:
            first = next((a for a in out if a.signal.name == entry.key), None)
            if first is not None:
                self.diag.error(f"'{entry.key}' is given twice in {what}", entry.key_span,
                                f"first given at line {first.span.line}" if first.span else None)
                continue
            q = self.quantity(entry.value, f"the {what} value of '{entry.key}'")
            if q is not None:
                span = entry.key_span.to(q.span) if entry.key_span and q.span else entry.key_span
                out.append(M.Assignment(signal=M.Signal(name=entry.key, span=entry.key_span),
                                        value=q, span=span))
        return out

    def aggregate(self, value: Value, what: str) -> M.Aggregate | None:
        tree = self.expr(value, what)
        if isinstance(tree, E.Name) and tree.id == "hard":
            return M.Aggregate(kind="hard", span=tree.span)
        if isinstance(tree, E.Call) and tree.func == "smooth":
            if len(tree.args) != 1:
                self.diag.error("smooth takes one temperature, smooth(0.01)", tree.span)
                return None
            tau = self.quantity(Scalar(span=tree.args[0].span, expr=tree.args[0]),
                                "smooth temperature")
            return M.Aggregate(kind="smooth", tau=tau, span=tree.span)
        if isinstance(tree, E.Name) and tree.id == "smooth":
            self.diag.error("smooth needs a temperature", tree.span, "write smooth(0.01)")
            return None
        if tree is not None:
            word = tree.id if isinstance(tree, E.Name) else (
                tree.func if isinstance(tree, E.Call) else "")
            self.diag.error(f"unknown aggregate '{E.unparse(tree)}'", tree.span,
                            did_you_mean(word, ("hard", "smooth"))
                            or "expected 'hard' or 'smooth(τ)'")
        return None

    # ------------------------------------------------------------------ structure
    def fields(self, block: Map, what: str, table: dict[str, tuple[str, Callable]],
               skip: tuple[str, ...] = ("kind",)) -> dict[str, Any]:
        """Convert a block's entries with a key → (field, converter) table, reporting unknown
        and repeated entries."""
        out: dict[str, Any] = {}
        seen: dict[str, Entry] = {}
        for entry in block.entries:
            if entry.key in skip:
                continue
            if entry.key == "id" and "id" not in table:
                self.diag.error(f"{what} takes no quoted id", entry.key_span,
                                'only `system gymnasium "ENV-ID"`, `system python '
                                '"module:function"`, `policy python "module:factory"` and '
                                '`policy from "RUN"` name something in quotes')
                continue
            accepted = [k for k, (name, _) in table.items() if name is not None]
            if entry.key not in table:
                self.diag.unknown(f"unknown entry '{entry.key}' in {what}", entry.key_span,
                                  entry.key, accepted, f"{what} accepts {one_of(accepted)}",
                                  code="unknown-entry")
                continue
            if table[entry.key][0] is None:  # a word of another kind: (message, hint)
                message, hint = table[entry.key][1]
                self.diag.error(message, entry.key_span, hint)
                continue
            if entry.key in seen:
                first = seen[entry.key].key_span
                self.diag.error(f"duplicate entry '{entry.key}' in {what}", entry.key_span,
                                f"first given at line {first.line}" if first else None)
                continue
            seen[entry.key] = entry
            name, convert = table[entry.key]
            result = convert(entry.value, entry.key)
            if result is not None:
                out[name] = result
        return out

    def kind_of(self, block: Value, what: str, kinds: tuple[str, ...]) -> str | None:
        if isinstance(block, Scalar):  # a bare kind, `optimizer adam`, with no entries
            return self.kind_of(Map(span=block.span, entries=[Entry("kind", block.span, block)]),
                                what, kinds)
        if not isinstance(block, Map):
            self.diag.error(f"{what} must be a block", getattr(block, "span", None))
            return None
        kind_entries = [e for e in block.entries if e.key == "kind"]
        if not kind_entries:
            self.diag.error(f"{what} needs a kind", block.span,
                            f"one of {one_of(kinds)}, e.g. `{what} {kinds[0]} {{ … }}`")
            return None
        for extra in kind_entries[1:]:
            self.diag.error(f"the kind of this {what} is given twice", extra.key_span,
                            f"it is the word after `{what}`; remove this entry")
        got = self.word(kind_entries[0].value, f"{what} kind")
        if got is None:
            return None
        word, span = got
        if word not in kinds:
            self.diag.unknown(f"unknown {what} kind '{word}'", span, word, kinds,
                              f"expected one of {one_of(kinds)}", code="unknown-kind")
            return None
        return word

    def typed(self, block: Value, what: str,
              variants: dict[str, tuple[type, dict[str, tuple[str, Callable]]]]):
        kind = self.kind_of(block, what, tuple(variants))
        if kind is None:
            self.failed.add(what)
            return None
        cls, table = variants[kind]
        if isinstance(block, Scalar):
            block = Map(span=block.span, entries=[])
        values = self.fields(block, f"{what} {kind}", table, skip=("kind",))
        return self._construct(cls, values, block.span)

    def _construct(self, cls, values, span):
        for name, f in cls.model_fields.items():  # lists default to empty
            if name not in values and name != "span" and f.is_required():
                values[name] = []
        return cls(span=span, **values)

    # ------------------------------------------------------------------ sections
    def build(self, doc: Map, path: str | None) -> M.Spec:
        sections: dict[str, Entry] = {}
        spec = M.Spec(span=doc.span, path=path)
        known = S.KEYS
        for entry in doc.entries:
            if entry.key not in known:
                meant = closest(entry.key, known)
                self.diag.error(f"unknown section '{entry.key}'", entry.key_span,
                                meant_hint(meant) if meant else f"sections are {one_of(known)}",
                                code="unknown-section", meant=meant)
                if meant:  # written, though misspelt: not also "missing"
                    self.failed.add(S.written_as(meant))
                continue
            if entry.key in sections and not S.repeated(entry.key):
                first = sections[entry.key].key_span
                self.failed.add(entry.key)
                self.diag.error(f"duplicate section '{entry.key}'", entry.key_span,
                                f"a spec has one {entry.key} section; the first is at line "
                                f"{first.line}" if first else None)
                continue
            sections[entry.key] = entry
            if entry.key in ("const",):
                self.build_consts(entry.value, spec)
        for entry in doc.entries:  # several `.scpo` lines each, or one YAML mapping
            if entry.key == "let":
                self.build_lets(entry.value, spec)
            elif entry.key in ("parameter", "disturbance"):
                self.build_uncertain(entry, spec)
        for kind in S.PROPERTIES:  # several .scpo items or one YAML list
            for entry in doc.entries:
                if entry.key == kind.key:
                    items = entry.value.items if isinstance(entry.value, Seq) else [entry.value]
                    for item in items:
                        prop = self.build_property(item, kind.word)
                        if prop is not None:
                            getattr(spec, kind.key).append(prop)

        if "spec" in sections:
            got = self.word(sections["spec"].value, "spec name")
            if got:
                spec.name = M.Ident(name=got[0], span=got[1])
        if "title" in sections:
            spec.title = self.text(sections["title"].value, "title")

        tables = self.tables()
        if "system" in sections:
            spec.system = self.typed(sections["system"].value, "system", tables["system"])
            self._written_equations(sections["system"].value)
        if "backup" in sections:
            spec.backup = self.typed(sections["backup"].value, "backup", tables["backup"])
        if "policy" in sections:
            spec.policy = self.typed(sections["policy"].value, "policy", tables["policy"])
        if "scenarios" in sections:
            spec.scenarios = self.build_scenarios(sections["scenarios"].value)
        if "objective" in sections:
            spec.objective = self.typed(sections["objective"].value, "objective",
                                        tables["objective"])
        if "train" in sections:
            spec.train = self.build_train(sections["train"].value)
        if "verify" in sections:
            spec.verify = self.build_verify(sections["verify"].value)
        return spec

    def tables(self) -> dict[str, dict[str, tuple[type, dict[str, tuple[str | None, Any]]]]]:
        """Each block with a kind → {kind: (model class, entry word → (field, converter))}
        (fields.py), built once per builder."""
        if self._tables is None:
            self._tables = field_tables(self)
        return self._tables

    def build_consts(self, value: Value, spec: M.Spec) -> None:
        if not isinstance(value, Map):
            self.diag.error("const must map names to numbers", getattr(value, "span", None),
                            "in YAML: `const: {dt: 0.1}`")
            return
        for entry in value.entries:
            if entry.key in self.consts or entry.key in {c.name for c in spec.consts}:
                self.diag.error(f"duplicate constant '{entry.key}'", entry.key_span)
                continue
            quantity = self.quantity(entry.value, f"constant '{entry.key}'")
            if quantity is None or quantity.value is None:  # reported: its uses say no more
                self.failed.add(f"const {entry.key}")
            if quantity is None:
                continue
            spec.consts.append(M.Const(name=entry.key, value=quantity, span=entry.key_span))
            if quantity.value is not None:
                self.consts[entry.key] = quantity.value

    def build_lets(self, value: Value, spec: M.Spec) -> None:
        """`let NAME = EXPR` lines (.scpo) or `let: {NAME: "EXPR"}` (YAML), in the order written;
        what a let may read, and cycles, are check's."""
        if not isinstance(value, Map):
            self.diag.error("let must map names to expressions", getattr(value, "span", None),
                            'in YAML: `let: {thrust: "T1 + T2"}`')
            self.failed.add("let")
            return
        for entry in value.entries:
            first = next((x for x in spec.lets if x.name.name == entry.key), None)
            if first is not None:
                self.diag.error(f"duplicate let '{entry.key}'", entry.key_span,
                                f"first defined at line {first.span.line}" if first.span else None)
                continue
            tree = self.expr(entry.value, f"let '{entry.key}'")
            if tree is None:
                self.failed.add(f"let {entry.key}")
                continue
            span = entry.key_span.to(tree.span) if entry.key_span and tree.span else \
                entry.key_span
            spec.lets.append(M.Let(name=M.Signal(name=entry.key, span=entry.key_span),
                                   expr=tree, span=span))

    def build_uncertain(self, entry: Entry, spec: M.Spec) -> None:
        """`parameter NAME in [lo, hi]` lines (.scpo) or `parameter: {NAME: [lo, hi]}` (YAML)."""
        section = entry.key
        into = spec.parameters if section == "parameter" else spec.disturbances
        pairs: list[tuple[str, Span | None, Value]] = []
        if isinstance(entry.value, Map):
            pairs = [(e.key, e.key_span, e.value) for e in entry.value.entries]
        else:
            items = entry.value.items if isinstance(entry.value, Seq) else [entry.value]
            for item in items:
                tree = self.expr(item, section)
                if isinstance(tree, E.Within) and isinstance(tree.arg, E.Name):
                    pairs.append((tree.arg.id, tree.arg.span,
                                  Scalar(span=tree.interval.span, expr=tree.interval)))
                elif tree is not None:
                    self.diag.error(f"expected `{section} NAME in [lo, hi]`", tree.span,
                                    f"e.g. `{section} a_lead in [-2, -1]`")
        for name, span, value in pairs:
            if any(u.name.name == name for u in [*spec.parameters, *spec.disturbances]):
                first = next(u for u in [*spec.parameters, *spec.disturbances]
                             if u.name.name == name)
                self.diag.error(f"'{name}' is declared twice ({first.section} and {section})"
                                if first.section != section else f"duplicate {section} '{name}'",
                                span, f"first declared at line {first.name.span.line}"
                                if first.name.span else None)
                continue
            interval = self.quantity(value, f"the range of {section} '{name}'")
            if interval is None:
                self.failed.add(f"{section} {name}")
                continue
            into.append(M.Uncertain(section=section, name=M.Signal(name=name, span=span),
                                    interval=interval, span=span.to(interval.span)
                                    if span and interval.span else span))

    def build_property(self, item: Value, section: str) -> M.Property | None:
        if not isinstance(item, Map):
            self.diag.error(f"each {section} must be a mapping with name and formula",
                            getattr(item, "span", None))
            return None
        values = self.fields(item, section, self.tables()[section][""][1], skip=())
        absent = [k for k in ("name", "formula") if k not in item.keys()]
        if absent:
            self.diag.error(f"{section} is missing its {' and '.join(absent)}", item.span)
        if "name" not in values or "formula" not in values:
            self.failed.add("properties")
            return None
        return M.Property(section=section, span=item.span, **values)

    def _name(self, value: Value, what: str) -> M.Signal | None:
        got = self.word(value, what)
        return M.Signal(name=got[0], span=got[1]) if got else None

    def build_scenarios(self, block: Value) -> M.Scenarios | None:
        if not isinstance(block, Map):
            self.diag.error("scenarios must be a block", getattr(block, "span", None))
            self.failed.add("scenarios")
            return None
        initial: list[M.InitialRange] = []
        others = Map(span=block.span, entries=[])
        for entry in block.entries:
            if entry.key == "initial":
                for rng in self._initial(entry):
                    first = next((r for r in initial if r.signal.name == rng.signal.name), None)
                    if first is not None:  # a build error: the YAML twin (a mapping) could not
                        self.diag.error(   # hold both, so fmt/convert must refuse, not drop one
                            f"duplicate initial range for '{rng.signal.name}'", rng.signal.span,
                            f"first given at line {first.span.line}" if first.span else None)
                    else:
                        initial.append(rng)
            else:
                others.entries.append(entry)
        values = self.fields(others, "scenarios", self.tables()["scenarios"][""][1], skip=())
        return M.Scenarios(span=block.span, initial=initial, **values)

    def _initial(self, entry: Entry) -> list[M.InitialRange]:
        """`initial NAME in [lo, hi]` (.scpo) or `initial: {NAME: [lo, hi]}` (YAML)."""
        out = []
        if isinstance(entry.value, Map):
            for e in entry.value.entries:
                interval = self.quantity(e.value, f"initial range of '{e.key}'")
                if interval is not None:
                    out.append(M.InitialRange(signal=M.Signal(name=e.key, span=e.key_span),
                                              interval=interval, span=e.key_span))
            return out
        tree = self.expr(entry.value, "initial")
        if isinstance(tree, E.Within) and isinstance(tree.arg, E.Name):
            interval = self.quantity(Scalar(span=tree.interval.span, expr=tree.interval),
                                     f"initial range of '{tree.arg.id}'")
            if interval is not None:
                out.append(M.InitialRange(signal=M.Signal(name=tree.arg.id, span=tree.arg.span),
                                          interval=interval, span=tree.span))
        elif tree is not None:
            self.diag.error("expected `initial NAME in [lo, hi]`", tree.span)
        return out

    def build_train(self, block: Value) -> M.Train | None:
        if not isinstance(block, Map):
            self.diag.error("train must be a block", getattr(block, "span", None))
            self.failed.add("train")
            return None
        values = self.fields(block, "train", self.tables()["train"][""][1], skip=())
        return M.Train(span=block.span, **values)

    def build_verify(self, block: Value) -> M.Verify | None:
        if not isinstance(block, Map):
            self.diag.error("verify must be a block", getattr(block, "span", None),
                            "write `verify { cells 4096  time_limit 300 }`")
            self.failed.add("verify")
            return None
        values = self.fields(block, "verify", self.tables()["verify"][""][1], skip=())
        return M.Verify(span=block.span, **values)
