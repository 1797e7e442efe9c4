"""The words of the language's choices — activations, solvers, losses, integrators, … — one
list each.  The builder accepts exactly these (fields.py), an editor offers them (vocabulary()),
and the rooms that implement them (policies/activations, compile/projection, systems/declared)
are held to them by tests/test_vocabularies.py."""

ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "sigmoid", "softplus", "identity")
SOLVERS = ("clarabel", "gurobi", "scs")
LOSSES = ("mse", "mae", "huber")
ON_VIOLATION = ("raise", "stop")
BACKTRACK = ("armijo", "none")
PRECISIONS = ("float64",)
DEVICES = ("cpu", "cuda")
SMOOTHNESS_MODES = ("given", "estimate")
POLICY_INIT = ("backup", "zero")
INTEGRATORS = ("rk4", "euler", "midpoint")
