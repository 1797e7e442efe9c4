"""Which entries each block and kind takes, and how each is converted: the builder's tables, one
place that `check` (through the builder) and an editor's completions (vocabulary()) both read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scpo_spec.language import model as M
from scpo_spec.language import sections as S
from scpo_spec.language.diagnostics import Collector
from scpo_spec.language.source import Source
from scpo_spec.language.words import (ACTIVATIONS, BACKTRACK, DEVICES, INTEGRATORS, LOSSES,
                                      ON_VIOLATION, POLICY_INIT, PRECISIONS, SMOOTHNESS_MODES,
                                      SOLVERS)

if TYPE_CHECKING:
    from scpo_spec.language.build import Builder

# An entry written in the wrong kind of declared system: (message, hint), reported at its word.
MISPLACED_DER = ("a discrete system's equations are written `next STATE = …`, not `der`",
                 "`next x = …` gives x⁺, the next state; `der x = …` (the derivative ẋ) "
                 "belongs to `system ode`")
MISPLACED_NEXT = ("an ode system's equations are written `der STATE = …`, not `next`",
                  "`der x = …` gives ẋ, the derivative; `next x = …` (the next state x⁺) "
                  "belongs to `system discrete`")

# `equilibrium` in a plant that is not linearised (no dynamics, or an environment's own)
NO_OPERATING_POINT = {
    kind: (f"a {kind} system has no operating point to declare",
           "`equilibrium` is for the plants that are linearised there: linear, pendulum, "
           "discrete, ode and python; remove it")
    for kind in ("static", "gymnasium")}

def field_tables(b: Builder) -> dict[str, dict[str, tuple[type, dict[str, tuple[str | None, Any]]]]]:
    """Each block with a kind → {kind: (model class, entry word → (field, converter))}: what
    `Builder.build` converts with, and what `vocabulary()` (an editor's completions) reads.  The
    converters are the builder's own (its quantities, signals, formulas, choices)."""
    q, s = b.quantity, b.signals
    ident = b.ident
    out: dict[str, dict] = {}

    def sub(what: str):  # a nested block with a kind, `optimizer adam { … }`
        convert = lambda v, w: b.typed(v, what, out[what])  # noqa: E731
        convert.block = what
        return convert

    eq = {"equilibrium": ("equilibrium", b.assignments)}  # (x*, u*) of linearisable plants
    # every policy and backup: what the network sees, and how its output is scaled
    ctl = {"observe": ("observe", b.observe), "output_scale": ("output_scale", q)}
    out["system"] = {
        "linear": (M.LinearSystem, {"state": ("states", s),
                                    "input": ("inputs", s),
                                    "A": ("A", q), "B": ("B", q), **eq}),
        "pendulum": (M.PendulumSystem, {"state": ("states", s),
                                        "input": ("inputs", s),
                                        "dt": ("dt", q), "g": ("g", q),
                                        "m": ("m", q), "l": ("l", q), **eq}),
        "static": (M.StaticSystem, {"state": ("states", s),
                                    "input": ("inputs", s),
                                    "equilibrium": (None, NO_OPERATING_POINT["static"])}),
        "gymnasium": (M.GymnasiumSystem, {"id": ("env_id", b.text),
                                          "observation": ("states", s),
                                          "action": ("inputs", s),
                                          "equilibrium": (None,
                                                          NO_OPERATING_POINT["gymnasium"])}),
        "discrete": (M.DiscreteSystem, {"state": ("states", s),
                                        "input": ("inputs", s),
                                        "next": ("next", b.equations),
                                        "der": (None, MISPLACED_DER), **eq}),
        "ode": (M.OdeSystem, {"state": ("states", s), "input": ("inputs", s),
                              "dt": ("dt", q),
                              "integrator": ("integrator", ident(INTEGRATORS)),
                              "substeps": ("substeps", q),
                              "der": ("der", b.equations),
                              "next": (None, MISPLACED_NEXT), **eq}),
        "python": (M.PythonSystem, {"id": ("function", b.text),
                                    "state": ("states", s), "input": ("inputs", s), **eq}),
    }
    out["backup"] = {
        "lqr": (M.LqrBackup, {"Q": ("Q", q), "R": ("R", q), **ctl}),
        "linear": (M.LinearBackup, {"K": ("K", q), "k": ("k", q), **ctl}),
        "torch": (M.TorchBackup, {"file": ("file", b.text), **ctl}),
        "onnx": (M.OnnxBackup, {"file": ("file", b.text), **ctl}),
    }
    out["policy"] = {
        "mlp": (M.MlpPolicy, {"hidden": ("hidden", q),
                              "activation": ("activation", ident(ACTIVATIONS)),
                              "residual": ("residual", ident(("backup", "none"))),
                              "seed": ("seed", q), **ctl}),
        "linear": (M.LinearPolicy, {"init": ("init", ident(POLICY_INIT)), **ctl}),
        "torch": (M.TorchPolicy, {"file": ("file", b.text), **ctl}),
        "onnx": (M.OnnxPolicy, {"file": ("file", b.text), **ctl}),
        "python": (M.PythonPolicy, {"id": ("factory", b.text), **ctl}),
        "from": (M.FromPolicy, {"id": ("run", b.text), "head": ("head", b.text),
                                **ctl}),
    }
    out["expert"] = {"linear": (M.LinearExpert, {"K": ("K", q), "bias": ("bias", q)})}
    out["states"] = {
        "normal": (M.NormalStates, {"mean": ("mean", q), "std": ("std", q)}),
        "uniform": (M.UniformStates, {"low": ("low", q), "high": ("high", q)})}
    out["objective"] = {
        "imitation": (M.ImitationObjective, {
            "expert": ("expert", sub("expert")), "states": ("states", sub("states")),
            "count": ("count", q), "seed": ("seed", q),
            "loss": ("loss", ident(LOSSES))}),
        "regression": (M.RegressionObjective, {
            "data": ("data", b.text), "inputs": ("inputs", s),
            "targets": ("targets", s), "loss": ("loss", ident(LOSSES))}),
        "cost": (M.CostObjective, {"stage": ("stage", b.formula),
                                   "terminal": ("terminal", b.formula)}),
        "return": (M.ReturnObjective, {"population": ("population", q),
                                       "sigma": ("sigma", q), "seed": ("seed", q)}),
    }
    out["optimizer"] = {
        "sgd": (M.SgdOptimizer, {"lr": ("lr", q), "momentum": ("momentum", q)}),
        "adam": (M.AdamOptimizer, {"lr": ("lr", q)})}
    out["executor"] = {
        "local": (M.LocalExecutor, {}),
        "ray": (M.RayExecutor, {"address": ("address", b.text),
                                "workers": ("workers", q)})}
    out["train"] = {"": (M.Train, {
        "steps": ("steps", q), "optimizer": ("optimizer", sub("optimizer")),
        "directions": ("directions", q), "perturbation": ("perturbation", q),
        "radius": ("radius", q), "margin": ("margin", q),
        "solver": ("solver", ident(SOLVERS)), "seed": ("seed", q),
        "on_violation": ("on_violation", ident(ON_VIOLATION)),
        "aggregate": ("aggregate", b.aggregate),
        "backtrack": ("backtrack", ident(BACKTRACK)),
        "precision": ("precision", ident(PRECISIONS)),
        "smoothness": ("smoothness", ident(SMOOTHNESS_MODES)),
        "executor": ("executor", sub("executor")),
        "device": ("device", ident(DEVICES)),
        "verify_every": ("verify_every", q),
    })}
    out["verify"] = {"": (M.Verify, {"cells": ("cells", q),
                                     "time_limit": ("time_limit", q)})}
    out["scenarios"] = {"": (M.Scenarios, {
        "count": ("count", q), "grid": ("grid", q), "seed": ("seed", q),
        "horizon": ("horizon", q), "holdout": ("holdout", q),
        "initial": ("initial", None)})}
    for section in (p.word for p in S.PROPERTIES):
        out[section] = {"": (M.Property, {
            "name": ("name", lambda v, w, section=section: b._name(v, f"{section} name")),
            "formula": ("formula", b.formula),
            "smoothness": ("smoothness", b.quantity),
            "margin": ("margin", b.quantity),
            "lipschitz": ("lipschitz", b.quantity),
        })}
    return out



def vocabulary() -> dict[str, dict[str, dict[str, tuple[str, ...]]]]:
    """What each block accepts, read from the builder's own tables (so an editor's completions
    never drift from what `check` accepts): block → kind ("" for a block without kinds: train,
    scenarios, constraint, stability) → entry word → the words its value may be (a nested block's
    kinds, a choice's words; empty: any value)."""
    from scpo_spec.language.build import Builder  # the converters are its own
    tables = Builder(Source(path="<vocabulary>", text=""), Collector()).tables()
    out: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {}
    for block, kinds in tables.items():
        out[block] = {}
        for kind, (_, table) in kinds.items():
            words = {}
            for word, (name, convert) in table.items():
                if name is None or word == "id":  # a word of another kind; the quoted label
                    continue
                if hasattr(convert, "block"):
                    words[word] = tuple(tables[convert.block])
                else:
                    words[word] = tuple(getattr(convert, "choices", ()))
            out[block][kind] = words
    return out
