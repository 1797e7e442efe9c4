"""Named expressions (`let NAME = EXPR`, LANGUAGE-v3.md) replaced by what they name.

Every consumer of an expression downstream of the language layer (metrics, declared equations,
observations, objectives) calls `expand`, so no code past here ever sees a let's name.  The tree
itself keeps the grouping: `let s = a + b` used in `2 * s` is the tree 2 * (a + b), which
`expr.unparse` writes with its parentheses, so printed text re-parses to the same function.
"""

from __future__ import annotations

from scpo_spec.language import expr as E
from scpo_spec.language import model as M


class LetCycle(ValueError):
    """A let that (through others) names itself; `cycle` lists the names around it."""

    def __init__(self, cycle: list[str]):
        super().__init__("the lets " + " -> ".join(cycle) + " form a cycle")
        self.cycle = cycle


def let_table(spec: M.Spec) -> dict[str, E.Node]:
    """name → definition; the first definition of a name (a second is a build error)."""
    table: dict[str, E.Node] = {}
    for let in spec.lets:
        table.setdefault(let.name.name, let.expr)
    return table


def find_cycle(spec: M.Spec) -> list[str] | None:
    """The names of one cycle among the lets (first name repeated last), or None."""
    table = let_table(spec)
    uses = {name: [n.id for n in E.names(expr) if n.id in table] for name, expr in table.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    for root in table:
        if state.get(root):
            continue
        path, stack = [root], [iter(uses[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(uses[nxt]))
    return None


def expand(expr: E.Node, spec: M.Spec) -> E.Node:
    """`expr` with every let replaced by its definition, recursively (a new tree; `expr` is not
    changed).  Raises LetCycle on a cycle (which `scpo check` reports first)."""
    table = let_table(spec)
    if not table:
        return expr
    done: dict[str, E.Node] = {}

    def let_value(name: str, path: tuple[str, ...]) -> E.Node:
        if name in path:
            raise LetCycle([*path[path.index(name):], name])
        if name not in done:
            done[name] = rebuild(table[name], (*path, name))
        return done[name]

    def rebuild(e: E.Node, path: tuple[str, ...]) -> E.Node:
        if isinstance(e, E.Name) and e.id in table:
            return let_value(e.id, path)
        update = {}
        for field in type(e).model_fields:
            value = getattr(e, field)
            if isinstance(value, E.Node):
                update[field] = rebuild(value, path)
            elif isinstance(value, list) and value and isinstance(value[0], E.Node):
                update[field] = [rebuild(v, path) for v in value]
        return e.model_copy(update=update) if update else e

    return rebuild(expr, ())
