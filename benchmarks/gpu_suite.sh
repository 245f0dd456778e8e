#!/usr/bin/env bash
# Accelerator benchmark suite: noise overhead, then sweep throughput, back to back; all
# figures go to one file. Usage: benchmarks/gpu_suite.sh [OUT_FILE]  (default gpu_suite.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_suite.txt}"
{
  echo "# gradnoise accelerator suite, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  python -c "import jax; print('jax', jax.__version__, jax.devices())"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  echo "## noise overhead"
  python benchmarks/noise_overhead.py
  echo "## sweep throughput"
  python benchmarks/sweep_throughput.py --runs 1,8,32,128
} 2>&1 | tee "$out"
