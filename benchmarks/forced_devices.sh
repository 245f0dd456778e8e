#!/usr/bin/env bash
# Trainer throughput with 1, 2 and 4 forced host CPU devices (the run axis sharded over
# them). On a 2-core machine this demonstrates correctness of the sharded path, not scaling.
set -euo pipefail
cd "$(dirname "$0")/.."
for n in 1 2 4; do
  echo "== $n host device(s)"
  XLA_FLAGS="--xla_force_host_platform_device_count=$n" JAX_PLATFORMS=cpu \
    python benchmarks/sweep_throughput.py --runs 8 --trainer_only | tail -n 2
done
