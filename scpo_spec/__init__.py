"""scpo-spec: train neural policies that never leave a safe operating regime.

The data flow is one-way: text → parse → model → check → compile → engine → audit → report.
`load_spec` gives the checked model of a spec; `load_run` gives a trained run back (its spec, its
policy, rollouts and metrics: see README.md "Python API").  torch is imported only when a run is
loaded.
"""


def __getattr__(name: str):
    """The spec names, imported on first use: `import scpo_spec` itself stays instant (the
    language layer takes ~0.6 s), so the `scpo` console script (console.py) is running before
    the command line loads, and a Ctrl-C then is "interrupted", not a traceback."""
    if name in ("load_spec", "check_text", "check_file"):
        from scpo_spec.language import load as module
    elif name in ("Diagnostic", "SpecError"):
        from scpo_spec.language import diagnostics as module
    elif name == "Spec":
        from scpo_spec.language import model as module
    else:
        raise AttributeError(f"module 'scpo_spec' has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)
    return value


def load_run(run_dir):
    """A run directory that passes `scpo audit` → `Run`: `.spec`, `.policy` (numpy or torch
    states (n,) or (N, n), any float dtype, computed in float64, returned as given), `.simulate`,
    `.metrics` and the spec's values (`horizon`, `state_names`, … , `spec_summary()`)."""
    from scpo_spec.engine.run import load_run as _load_run
    return _load_run(run_dir)


__all__ = ["load_run", "load_spec", "check_text", "check_file", "Diagnostic", "SpecError", "Spec"]
__version__ = "0.1.0"
