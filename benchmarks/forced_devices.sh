#!/usr/bin/env bash
# Trainer throughput with 1, 2 and 4 forced host CPU devices (the run axis sharded over
# them) at 1, 8, 32 and 64 runs per group: the figures behind gradnoise.run's default split
# (gradnoise/devices.py). Meaningful on a quiet machine only.
set -euo pipefail
cd "$(dirname "$0")/.."
for n in 1 2 4; do
  echo "== $n host device(s)"
  XLA_FLAGS="--xla_force_host_platform_device_count=$n" JAX_PLATFORMS=cpu \
    python benchmarks/sweep_throughput.py --runs 1,8,32,64 --trainer_only | tail -n 5
done
