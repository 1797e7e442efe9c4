#!/usr/bin/env python
"""What tracking costs a training step (see benchmarks/README.md).

    python benchmarks/bench_tracking.py [--spec specs/double_integrator.scpo] [--steps 20]
                                        [--mlflow URI]

Trains the spec for `--steps` steps into a temporary folder with the `scpo train` listener
(`scpo_spec.tracking.Tracking`: TensorBoard on, MLflow when `--mlflow` is given) and times the
listener itself on every record, against the step's own time (the `timing` of its record).
Timing the listener rather than two whole trainings keeps the step-to-step noise out of a
difference that is far smaller than it.  Nothing is asserted on a time.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scpo_spec.audit.records import Step
from scpo_spec.engine.listener import RunListener
from scpo_spec.engine.run import train
from scpo_spec.language.load import load_spec
from scpo_spec.tracking import Tracking


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", type=Path, default=Path("specs/double_integrator.scpo"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mlflow", default=None, help="also track to this MLflow URI")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    text = args.spec.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        tracking = Tracking(tensorboard=True, mlflow_uri=args.mlflow, experiment="bench",
                            warn=print)
        listener, step_time = [], []

        class Timed(RunListener):
            def recorded(self, run_dir, record):
                t = time.perf_counter()
                tracking.record(run_dir, record)
                if isinstance(record, Step):
                    listener.append(time.perf_counter() - t)
                    step_time.append(sum(record.timing.values()))

        train(args.spec, spec, text, out=Path(tmp) / "run", steps=args.steps, listener=Timed())
        tracking.finish("n/a", [])
        files = list((Path(tmp) / "run" / "tensorboard").iterdir())
        size = sum(f.stat().st_size for f in files)
    ms, step = 1e3 * np.array(listener), 1e3 * np.array(step_time)
    print(f"{args.spec} ({args.steps} steps; {platform.processor() or platform.machine()}, "
          f"torch threads {torch.get_num_threads()})")
    print(f"step time        median {np.median(step):8.2f} ms")
    print(f"tracking/step    median {np.median(ms):8.3f} ms   max {ms.max():.3f} ms   "
          f"({100 * np.median(ms) / np.median(step):.3f}% of a step)")
    print(f"event file       {size / max(len(listener), 1):.0f} bytes per step")


if __name__ == "__main__":
    main()
