"""Neural Programmer training speed and memory: batch 50, T = 4, 1 and 8 runs.

Settings: ``single`` (one column, 30-100 rows; ``--hidden`` d, 256 in the paper, 64 in
the ``small`` variant) and ``five`` (five columns, bidirectional question RNN). Each
configuration compiles one ``jit(vmap(scan(step)))`` epoch of ``--steps`` steps through the
shared trainer, runs it once to warm up, then times one more epoch. Memory is XLA's
compiled estimate for the epoch program (arguments + outputs + temporaries, minus aliased
donations) per run, and its FLOP count (XLA cost analysis) per run-step: XLA counts the
body of the epoch's scan once, so the program's count is one step's (0.81 GFLOP for one
column at d = 256, near a hand count of the matrix products: 4.7 MFLOP forward per
example, x 3 with the backward pass, x 50 = 0.71 GFLOP). The training data
(shared by the runs) is counted once per group, so the per-run memory of 1 run includes
it and that of 8 runs one eighth of it.
Run: ``python benchmarks/neural_programmer_step.py [--runs 1,8] [--steps 20]
[--hidden 64,256] [--settings single,five]``.
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
from configs import neural_programmer as np_configs  # noqa: E402
from experiments import neural_programmer  # noqa: E402
from gradnoise import fields, sweep, trainer  # noqa: E402

EXP = neural_programmer.EXPERIMENT
SETTINGS = {"single": {}, "five": {"data.max_columns": 5, "model.bidirectional": True}}


def measure(setting: str, hidden: int, num_runs: int,
            steps: int) -> tuple[float, float, float]:
  """(steps per second of the whole group, peak bytes per run, XLA's FLOP count per
  run-step)."""
  config = sweep.apply_overrides(np_configs.get_config("table4_single"), {
      **SETTINGS[setting], "model.hidden": hidden, "data.train_size": 50 * steps})
  config = fields.complete(config, {**trainer.FIELDS, **EXP.fields})
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
  cost = compiled.cost_analysis()
  flops = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan"))
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  state, _ = program.train_epoch(state, hp, train, np.int32(0))
  jax.block_until_ready(state)
  start = time.perf_counter()
  state, metrics = program.train_epoch(state, hp, train, np.int32(1))
  jax.block_until_ready((state, metrics))
  return steps / (time.perf_counter() - start), peak / num_runs, flops / num_runs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="1,8")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--hidden", default="64,256")
  parser.add_argument("--settings", default="single,five")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"{'setting':>8s} {'d':>4s} {'runs':>5s} {'steps/s':>8s} {'run-steps/s':>12s} "
        f"{'MiB per run':>12s} {'GFLOP/run-step':>15s}", flush=True)
  for setting in args.settings.split(","):
    for hidden in [int(h) for h in args.hidden.split(",")]:
      for n in [int(r) for r in args.runs.split(",")]:
        steps_per_s, bytes_per_run, flops = measure(setting, hidden, n, args.steps)
        print(f"{setting:>8s} {hidden:4d} {n:5d} {steps_per_s:8.3f} {steps_per_s * n:12.3f} "
              f"{bytes_per_run / 2**20:12.1f} {flops / 1e9:15.3f}", flush=True)


if __name__ == "__main__":
  main()
