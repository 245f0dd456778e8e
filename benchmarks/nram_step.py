"""NRAM training speed and memory at the table5 shapes: ListK in 24 cells, 16 timesteps,
LSTM width 32, R = 4, batch 32, at 1, 8 and 64 runs.

Each configuration compiles one ``jit(vmap(scan(step)))`` epoch of ``--steps`` steps
through the shared trainer, runs it once to warm up, then times one more epoch. Memory is
XLA's compiled estimate for the epoch program (arguments + outputs + temporaries, minus
aliased donations), per run. ``--variant small`` measures the small variant's shapes.
Run: ``python benchmarks/nram_step.py [--runs 1,8,64] [--steps 20] [--variant table5]``.
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
from configs import nram as nram_configs  # noqa: E402
from experiments import nram  # noqa: E402
from gradnoise import sweep, trainer  # noqa: E402

EXP = nram.EXPERIMENT


def measure(variant: str, num_runs: int, steps: int) -> tuple[float, float, float]:
  """(steps per second of the whole group, peak bytes per run, compile seconds)."""
  config = nram_configs.get_config(variant)
  config = sweep.apply_overrides(config, {"data.pool_size": config.batch_size * steps,
                                          "data.test_examples": 32})
  data = EXP.load_data(config)
  program = trainer.build_program(EXP, config, data.num_train)
  mesh = trainer.run_mesh()
  hps = [trainer.run_hparams(sweep.apply_overrides(config, {"seed": s}), EXP)
         for s in range(num_runs)]
  hp = trainer.to_global(trainer.stack_hparams(hps, trainer.padded_size(num_runs, mesh.size)),
                         NamedSharding(mesh, PartitionSpec("runs")))
  train = trainer.to_global(data.train, NamedSharding(mesh, PartitionSpec()))
  state = program.init(hp, train)
  started = time.perf_counter()
  compiled = program.train_epoch.lower(state, hp, train, np.int32(0)).compile()
  compile_s = time.perf_counter() - started
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  state, _ = program.train_epoch(state, hp, train, np.int32(0))
  jax.block_until_ready(state)
  start = time.perf_counter()
  state, metrics = program.train_epoch(state, hp, train, np.int32(1))
  jax.block_until_ready((state, metrics))
  return steps / (time.perf_counter() - start), peak / num_runs, compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="1,8,64")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--variant", default="table5", choices=nram_configs.VARIANTS)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"variant {args.variant}")
  print(f"{'runs':>5s} {'steps/s':>8s} {'run-steps/s':>12s} {'MiB per run':>12s} "
        f"{'compile s':>10s}")
  for n in [int(r) for r in args.runs.split(",")]:
    steps_per_s, bytes_per_run, compile_s = measure(args.variant, n, args.steps)
    print(f"{n:5d} {steps_per_s:8.3f} {steps_per_s * n:12.3f} {bytes_per_run / 2**20:12.1f} "
          f"{compile_s:10.1f}", flush=True)


if __name__ == "__main__":
  main()
