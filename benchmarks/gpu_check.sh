#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (the project never needs one):
#   bash benchmarks/gpu_check.sh [LOG]
# 1. the device tests (tests/engine/test_device.py: GPU metrics = CPU metrics to 1e-12; `scpo train
#    --device cuda` CERTIFIED and audited) and the optimisations' equality tests;
# 2. the scale benchmark with the rollouts and the bank on the GPU, up to d ≈ 4.2 million;
# 3. bench_engine's figures with the plain-matmul baselines on the GPU.
# Each part has its own time limit so one that hangs does not take the others with it.
# Where the machine lacks a Python package, put wheels in .whl/ (see benchmarks/README.md).
set -u
LOG=${1:-gpu_check.log}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'CPUs', os.cpu_count())"
  echo "== tests on the GPU"
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/engine/test_device.py tests/compile/test_perf_equality.py 2>&1 | tail -15
  echo "== scpo train --device cuda, then scpo audit (no GPU used by the audit)"
  rm -rf /tmp/gpu_run
  timeout 60 python3 -m scpo_spec.cli train specs/double_integrator.scpo --device cuda \
    --out /tmp/gpu_run --no-tensorboard 2>&1 | tail -6
  timeout 30 python3 -m scpo_spec.cli audit /tmp/gpu_run 2>&1 | tail -3
  echo "== bench_scale --device cuda"
  timeout 270 python3 benchmarks/bench_scale.py --device cuda --widths ${WIDTHS:-64,256,1024,2048,4096} 2>&1
  echo "== bench_engine --device cuda"
  timeout 60 python3 benchmarks/bench_engine.py --device cuda --no-blas-compare --no-headline 2>&1
  date -u
} 2>&1 | tee "$LOG"
