"""scpo-spec: train neural policies that never leave a safe operating regime.

The data flow is one-way: text → parse → model → check → compile → engine → audit → report.
`load_spec` gives the checked model of a spec; `load_run` gives a trained run back (its spec, its
policy, its verdict, rollouts and metrics: see README.md "Python API").  Every public name is
looked up on first use (PEP 562): `import scpo_spec` stays instant (the language layer takes
~0.6 s, torch more), so the `scpo` console script (console.py) is running before the command line
loads, and a Ctrl-C then is "interrupted", not a traceback.  `load_run` and `Run` are
scpo_spec.engine.trained's own objects, not wrappers.
"""

_HOMES = {  # public name → the module that owns it
    "load_spec": "scpo_spec.language.load",
    "check_text": "scpo_spec.language.load",
    "check_file": "scpo_spec.language.load",
    "Diagnostic": "scpo_spec.language.diagnostics",
    "SpecError": "scpo_spec.language.diagnostics",
    "Spec": "scpo_spec.language.model",
    "load_run": "scpo_spec.engine.trained",  # torch comes in with these two
    "Run": "scpo_spec.engine.trained",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'scpo_spec' has no attribute {name!r}")
    from importlib import import_module
    value = globals()[name] = getattr(import_module(_HOMES[name]), name)
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = list(_HOMES)
__version__ = "0.1.0"
