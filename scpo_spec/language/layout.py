"""The key names and order of a section's entries, shared by both writers (the sections' own
order is language/sections.py's)."""

from __future__ import annotations

from typing import Any, Iterator

from scpo_spec.language import model as M

# model field → key, where the two differ
_SYSTEM_KEYS = {"states": "state", "inputs": "input"}
_GYM_KEYS = {"states": "observation", "inputs": "action", "env_id": "id"}
_PYTHON_KEYS = {**_SYSTEM_KEYS, "function": "id"}  # the label: `system python "module:fn"`
# a policy's quoted label: `policy python "module:factory"`, `policy from "RUN"`
_LABEL_KEYS = {M.PythonPolicy: {"factory": "id"}, M.FromPolicy: {"run": "id"}}


def entries(node: M.Node) -> Iterator[tuple[str, Any]]:
    """(key, value) for every entry that is set, in canonical order (the model's field order);
    `kind` is not included."""
    if isinstance(node, M.GymnasiumSystem):
        keys = _GYM_KEYS
    elif isinstance(node, M.PythonSystem):
        keys = _PYTHON_KEYS
    elif isinstance(node, (M.LinearSystem, M.PendulumSystem, M.StaticSystem, M.DiscreteSystem,
                           M.OdeSystem)):
        keys = _SYSTEM_KEYS
    else:
        keys = _LABEL_KEYS.get(type(node), {})
    fields = list(type(node).model_fields)
    if isinstance(node, M.Controller):  # what every controller shares goes last
        shared = list(M.Controller.model_fields)
        fields = [f for f in fields if f not in shared] + shared
    for name in fields:
        if name in ("span", "kind"):
            continue
        value = getattr(node, name)
        if value is None or value == []:
            continue
        yield keys.get(name, name), value
