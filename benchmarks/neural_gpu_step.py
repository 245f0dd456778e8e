"""Neural GPU training speed and memory: m = 24 maps, length 41, batch 64, 1 and 8 runs.

Length 41 is 20-bit operands (the paper's training length). Each configuration compiles
one ``jit(vmap(scan(step)))`` epoch of ``--steps`` steps through the shared trainer, runs
it once to warm up, then times one more epoch. Memory is XLA's compiled estimate for the
epoch program (arguments + outputs + temporaries, minus aliased donations), per run.
Run: ``python benchmarks/neural_gpu_step.py [--runs 1,8] [--steps 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import neural_gpu as ngpu_configs  # noqa: E402
from experiments import neural_gpu  # noqa: E402
from gradnoise import sweep, trainer  # noqa: E402

EXP = neural_gpu.EXPERIMENT


def measure(num_runs: int, steps: int) -> tuple[float, float]:
  """(steps per second of the whole group, peak bytes per run)."""
  config = sweep.apply_overrides(ngpu_configs.get_config("table6"), {
      "batch_size": 64, "data.pool_size": 64 * steps, "data.test_examples": 64})
  data = EXP.load_data(config)
  program = trainer.build_program(EXP, config, data.num_train)
  mesh = trainer.run_mesh()
  hps = [trainer.run_hparams(sweep.apply_overrides(config, {"seed": s}), EXP)
         for s in range(num_runs)]
  hp = trainer.to_global(trainer.stack_hparams(hps, trainer.padded_size(num_runs, mesh.size)),
                         NamedSharding(mesh, PartitionSpec("runs")))
  train = trainer.to_global(data.train, NamedSharding(mesh, PartitionSpec()))
  state = program.init(hp, train)
  compiled = program.train_epoch.lower(state, hp, train, np.int32(0)).compile()
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  state, _ = program.train_epoch(state, hp, train, np.int32(0))
  jax.block_until_ready(state)
  start = time.perf_counter()
  state, metrics = program.train_epoch(state, hp, train, np.int32(1))
  jax.block_until_ready((state, metrics))
  return steps / (time.perf_counter() - start), peak / num_runs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="1,8")
  parser.add_argument("--steps", type=int, default=2)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"{'runs':>5s} {'steps/s':>8s} {'run-steps/s':>12s} {'MiB per run':>12s}")
  for n in [int(r) for r in args.runs.split(",")]:
    steps_per_s, bytes_per_run = measure(n, args.steps)
    print(f"{n:5d} {steps_per_s:8.3f} {steps_per_s * n:12.3f} {bytes_per_run / 2**20:12.1f}")


if __name__ == "__main__":
  main()
