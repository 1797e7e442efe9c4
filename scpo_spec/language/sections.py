"""The sections of a spec: their words, the order they are listed and written in, which are
required — the one table every reader of the language consults (the grammar's hints, the builder,
the checks, `fmt` and the YAML writer, the language server).  A new section is one more row here
(then its form in grammars/scpo.lark, whose keywords a test compares with `WORDS`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    word: str            # as written in .scpo: `constraint NAME: …`
    key: str             # the document's (and the YAML twin's) key: `constraints:`
    required: bool       # a spec without it is refused ("missing section 'system'")
    repeated: bool       # written several times, one item each (`const`, `let`, `constraint`)
    kind: bool           # written with a kind: `system linear { … }`
    doc: str             # what hover says

    @property
    def built_as(self) -> str:
        """The name the builder records when this section is written but not built (misspelt,
        or broken), so the checks do not also call it missing: the two property sections share
        one ("at least one constraint or stability margin")."""
        return "properties" if self.key in ("constraints", "stability") else self.key


# In the order the reference lists them (LANGUAGE.md, the grammar's hints, completion).
SECTIONS: tuple[Section, ...] = (
    Section("spec", "spec", False, False, False,
            "`spec NAME \"title\"`: names the spec (exactly once)."),
    Section("const", "const", False, True, False,
            "`const NAME = VALUE`: a named number, vector or matrix, usable everywhere."),
    Section("let", "let", False, True, False,
            "`let NAME = EXPR`: a named expression of states, inputs, constants, parameters, "
            "disturbances and other lets, usable wherever an expression is."),
    Section("parameter", "parameter", False, True, False,
            "`parameter NAME in [lo, hi]`: an uncertain number, one value per scenario held "
            "over the whole rollout (drawn uniformly from the scenarios' seed)."),
    Section("disturbance", "disturbance", False, True, False,
            "`disturbance NAME in [lo, hi]`: an uncertain input, a fresh value at every step of "
            "every scenario (drawn uniformly from the scenarios' seed)."),
    Section("system", "system", True, False, True,
            "`system KIND { … }`: the plant — its signals and dynamics (exactly once)."),
    Section("backup", "backup", False, False, True,
            "`backup KIND { … }`: the known-safe controller the policy starts from or falls back "
            "to (at most once)."),
    Section("policy", "policy", True, False, True,
            "`policy KIND { … }`: the trained controller and its parameters θ (exactly once)."),
    Section("scenarios", "scenarios", True, False, False,
            "`scenarios { … }`: the initial states, their count and the horizon every metric is "
            "rolled out over (exactly once)."),
    Section("constraint", "constraints", False, True, False,
            "`constraint NAME: FORMULA`: a safety metric g ≤ 0 over every scenario's rollout, "
            "kept by every accepted step."),
    Section("stability", "stability", False, True, False,
            "`stability NAME: FORMULA`: a stability margin (e.g. spectral_radius), kept like a "
            "constraint."),
    Section("objective", "objective", True, False, True,
            "`objective KIND { … }`: what training improves (exactly once)."),
    Section("train", "train", True, False, False,
            "`train { … }`: the SCPO step — optimizer, directions, radius, margin, solver "
            "(exactly once)."),
    Section("verify", "verify", False, False, False,
            "`verify { cells 4096  time_limit 300 }`: the budget of `scpo verify`, which proves "
            "each constraint over the whole initial set (at most once)."),
)

WORDS = tuple(s.word for s in SECTIONS)
BY_WORD = {s.word: s for s in SECTIONS}
BY_KEY = {s.key: s for s in SECTIONS}
REQUIRED = tuple(s.key for s in SECTIONS if s.required)
WITH_KIND = tuple(s.word for s in SECTIONS if s.kind)
PROPERTIES = tuple(s for s in SECTIONS if s.word in ("constraint", "stability"))
# The order `fmt` and `convert` write a spec in: every name declared (constants, then the
# uncertain numbers, then the lets that may read them) before the blocks that use them.
WRITTEN = tuple(BY_WORD[w] for w in ("spec", "const", "parameter", "disturbance", "let",
                                     "system", "backup", "policy", "scenarios", "constraint",
                                     "stability", "objective", "train", "verify"))
assert sorted(WRITTEN, key=SECTIONS.index) == list(SECTIONS)  # the same sections, reordered
# The document's keys beyond the sections: `title` (a YAML spec's; `.scpo` writes it after the
# name).
KEYS = ("spec", "title", *(s.key for s in SECTIONS if s.word != "spec"))


def section(word_or_key: str) -> Section | None:
    """The section a word (`constraint`) or a document key (`constraints`) names."""
    return BY_WORD.get(word_or_key) or BY_KEY.get(word_or_key)


def written_as(word_or_key: str) -> str:
    """What the builder records for a section written but not built (`Section.built_as`; a
    document key that is no section, `title`, as itself)."""
    found = section(word_or_key)
    return found.built_as if found else word_or_key


def repeated(word_or_key: str) -> bool:
    found = section(word_or_key)
    return found is not None and found.repeated
