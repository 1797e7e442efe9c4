"""The safe-by-induction training loop of ALGORITHM.md."""
