"""Compile a checked spec into what the engine runs: rollout evaluators for the safety metrics,
a differentiable objective and the projection template."""
