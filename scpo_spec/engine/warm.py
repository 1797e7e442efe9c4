"""Compiling a spec whose policy is `policy from "RUN"`: the source run read (audit/warm_start.py)
and its policy section compiled in place of `policy from`, θ₀ its last accepted θ — or, for a run
that already started (`--resume`), the source as its own header recorded it, never read again."""

from __future__ import annotations

from pathlib import Path

import torch

from scpo_spec.audit.warm_start import (WarmStart, WarmStartError, is_warm_start, read_source,
                                        resolved)
from scpo_spec.compile.problem import CompiledSpec, compile_spec
from scpo_spec.dtype import DTYPE
from scpo_spec.language.diagnostics import Diagnostic


def compile_warm(spec, base_dir: Path, recorded: WarmStart | None = None
                 ) -> tuple[CompiledSpec, WarmStart | None]:
    """`compile_spec`, with a `policy from` resolved (from `recorded` when given): `.spec` has
    the source's policy section in its place (what Ray's workers and `verify` compile again),
    `.family` is the source's, with θ₀ the source's θ unless `recorded` (the state holds θ),
    and `.warm_start` the header's record of the source."""
    if not is_warm_start(spec):
        return compile_spec(spec, base_dir), None
    warm = recorded if recorded is not None else read_source(spec, base_dir)
    compiled = compile_spec(resolved(spec, warm), base_dir)
    compiled.warm_start = warm.record()
    if warm.theta is not None:
        theta = torch.from_numpy(warm.theta).to(DTYPE)
        family = compiled.family
        if theta.shape != family.theta0.shape:
            raise WarmStartError(f"the run '{warm.run}' holds {theta.numel()} weights; its "
                                 f"policy section here has {family.d}", spec.policy.run.span)
        family.theta0 = theta
    return compiled, warm


def check_warm_start(spec, base_dir: Path) -> list[Diagnostic]:
    """`scpo check`: the run a `policy from` names exists, passes its audit (and ends at its
    head) and fits the spec — a located error otherwise."""
    if not is_warm_start(spec) or spec.policy.run is None:
        return []
    try:
        read_source(spec, base_dir)
    except WarmStartError as err:
        return [Diagnostic(message=err.message, span=err.span, hint=err.hint)]
    return []
