"""Comparing numbers that two code paths computed from the same inputs.

A float64 matrix product (or a vectorised elementwise kernel) may add in another order when
the thread count, the batch size or the shape changes, or in another process (a Ray worker):
its BLAS picks another kernel, and the last bits differ (an AVX-512 CPU did, where CI's AVX2
did not).  Tests compare such paths to CROSS_PATH, relative and absolute, with non-finite
entries in the same places; where the path is the same (same calls, same shapes) they stay bit
for bit."""

from __future__ import annotations

import numpy as np

CROSS_PATH = 1e-12


def as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close_across_paths(actual, expected, what: str = "") -> None:
    """Equal to CROSS_PATH (relative and absolute); ±inf and NaN in the same places."""
    np.testing.assert_allclose(as_array(actual), as_array(expected), rtol=CROSS_PATH,
                               atol=CROSS_PATH, equal_nan=True, err_msg=what)
