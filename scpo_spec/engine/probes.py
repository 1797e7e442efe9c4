"""The random probes of a step's candidate bank (ALGORITHM.md step 2): unit Gaussian directions
from the run's seed, drawn fast enough that a million-weight policy does not wait for them.

Row j of step t's block is numpy's SFC64 generator seeded with `SeedSequence([seed, t, j])`,
filled with `standard_normal` (ziggurat).  So a step's probes are a function of (seed, step, j)
alone: the same whatever the number of threads, whether the run was interrupted and resumed, or
whether that step needed its extra probe; and the rows fill in parallel (numpy releases the GIL
while it fills an array).  torch's CPU `randn` in float64 took 73 ms for 16 × 264 705 numbers on
this project's 2-core machine, one SFC64 stream per row on 2 threads 20 ms
(benchmarks/README.md).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE != threads:
        if _POOL is not None:
            _POOL.shutdown(wait=True)
        _POOL, _POOL_SIZE = ThreadPoolExecutor(threads, thread_name_prefix="scpo-probes"), threads
    return _POOL


def row_generator(seed: int, step: int, row: int) -> np.random.Generator:
    """The stream of probe `row` at `step`: independent of every other (seed, step, row)."""
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, step, row])))


def fill_gaussian(out: torch.Tensor, seed: int, step: int, first_row: int = 0,
                  threads: int | None = None) -> torch.Tensor:
    """Fill the rows of `out` (r, d), a contiguous float64 CPU tensor, with rows
    `first_row … first_row + r − 1` of step `step`'s standard normal block; returns `out`."""
    if out.dtype != torch.float64 or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError("probes are drawn into a contiguous float64 CPU tensor")
    rows = out.numpy()
    threads = max(1, min(len(rows), threads or torch.get_num_threads() or os.cpu_count() or 1))

    def fill(j: int) -> None:
        row_generator(seed, step, first_row + j).standard_normal(out=rows[j])

    if threads == 1 or len(rows) < 2:
        for j in range(len(rows)):
            fill(j)
    else:
        for f in [_pool(threads).submit(fill, j) for j in range(len(rows))]:
            f.result()
    return out
