"""The words of `scpo verify`'s answers and the rule that makes its overall verdict — in one
torch-free place, so that the prover (verify/prove.py) and the audit that re-checks its record
(audit/proof.py, numpy only) apply the same rule."""

PROVED, COUNTEREXAMPLE, UNDECIDED = "PROVED", "COUNTEREXAMPLE", "UNDECIDED"
PROOF_VERDICTS = (PROVED, COUNTEREXAMPLE, UNDECIDED)


def overall_proof_verdict(verdicts) -> str:
    """The overall verdict from the per-constraint ones: a counterexample refutes, PROVED needs
    every constraint proved, anything else is UNDECIDED."""
    verdicts = set(verdicts)
    if COUNTEREXAMPLE in verdicts:
        return COUNTEREXAMPLE
    return PROVED if verdicts == {PROVED} else UNDECIDED
