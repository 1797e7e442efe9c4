"""Policies as flat weight vectors θ ∈ ℝᵈ, evaluated for many candidates at once."""

from scpo_spec.policies.backup import Backup, make_backup
from scpo_spec.policies.policy import PolicyFamily, make_policy

__all__ = ["Backup", "PolicyFamily", "make_backup", "make_policy"]
