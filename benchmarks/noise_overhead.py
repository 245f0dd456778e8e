"""Cost of gradient noise per training step: no noise vs optax.add_noise vs gradnoise;
and the cost of the trainer's per-step diagnostics.

Issue setup: MLP 784 -> 20 x 50 ReLU -> 10, batch 128, clip_by_global_norm(10) then
SGD(0.1); one epoch of 468 steps inside ``lax.scan``; every variant measured side by side
in this process (min over repeats). ``gradnoise.noisy`` clips with gradnoise's
overflow-safe global clip, also timed alone without noise.

Diagnostics: the trainer's training epoch (``trainer.build_program``, the same model,
Simple init, clip 10, annealed noise eta 0.01, random MNIST-shaped inputs) with
``train.diagnostics`` off, on, on with ``train.diagnostics_per_leaf``, and on every 10th
step (``train.diagnostics_every=10``), for 1 and 16 runs at once (``--runs``; the tables
in benchmarks/README.md use 1,32), interleaved, min over repeats; with XLA's flop count
of the step and the number of kernels in the compiled step (:func:`step_kernels`).
Run: ``python benchmarks/noise_overhead.py [--runs 1,16]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradnoise

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import mnist_mlp as mnist_configs  # noqa: E402
from experiments import mnist_mlp  # noqa: E402
from gradnoise import experiment, fields, sweep, trainer  # noqa: E402

DIAGNOSTICS = {"off": {"train.diagnostics": False}, "on": {},
               "on, per leaf": {"train.diagnostics_per_leaf": True},
               "on, every 10th step": {"train.diagnostics_every": 10}}


def init_mlp(key, sizes):
  params = []
  for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
    w = jax.random.normal(jax.random.fold_in(key, i), (m, n)) * (2.0 / m) ** 0.5
    params.append({"w": w, "b": jnp.zeros(n)})
  return params


def loss_fn(params, x, y):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  logits = x @ params[-1]["w"] + params[-1]["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_epoch(tx, steps, batch):
  def epoch(params, opt_state, xs, ys):
    def step(carry, i):
      params, opt_state = carry
      x = jax.lax.dynamic_slice_in_dim(xs, i * batch, batch)
      y = jax.lax.dynamic_slice_in_dim(ys, i * batch, batch)
      grads = jax.grad(loss_fn)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
    return params, opt_state

  return jax.jit(epoch)


# Instructions of a compiled computation that are not kernels: views, tuples, constants.
NOT_KERNELS = ("get-tuple-element", "bitcast", "constant", "tuple", "parameter")


def step_kernels(compiled_text: str) -> int:
  """Kernels (fusions, dots, copies, custom calls, loops, ...) XLA runs per training step:
  the top-level instructions of the compiled module's computation with the most fusions
  (the body of the epoch's ``lax.scan``), views and tuples aside; a ``conditional`` or
  ``while`` counts as one. Deterministic for a given jax/XLA version, unlike the timings."""
  body = max(compiled_text.split("\n\n"), key=lambda c: c.count(" fusion("))
  count = 0
  for line in body.splitlines():
    match = re.match(r"\s+(?:ROOT )?%?\S+ = ", line)
    if not match:
      continue
    rest, depth = line[match.end():], 0
    for k, char in enumerate(rest):  # skip the result type, which may be a tuple
      depth += (char in "([{") - (char in ")]}")
      if char == " " and depth == 0:
        break
    opcode = re.match(r"([\w-]+)\(", rest[k + 1:])
    count += bool(opcode) and opcode.group(1) not in NOT_KERNELS
  return count


def trainer_epoch_costs(steps: int, runs: int, repeats: int
                        ) -> tuple[dict[str, float], dict[str, int | None],
                                   dict[str, float], dict[str, float]]:
  """Per DIAGNOSTICS setting, ``runs`` runs at once: XLA's flop count of the lowered
  training epoch (a deterministic proxy, no compilation; XLA counts the scanned step
  once, so this is one step's), the kernels per step (:func:`step_kernels`; None with
  ``repeats`` = 0, which compiles nothing), and wall and CPU (process: all threads)
  seconds per step, each the min over ``repeats`` interleaved calls (inf with
  ``repeats`` = 0). On a shared machine the CPU time is the steadier figure."""
  exp = mnist_mlp.EXPERIMENT
  base = fields.complete(mnist_configs.get_config("quick"), {**trainer.FIELDS, **exp.fields})
  rng = np.random.default_rng(0)
  train = {"x": rng.random((steps * 128, 784), dtype=np.float32),
           "y": rng.integers(0, 10, steps * 128).astype(np.int32)}
  data = experiment.Dataset(train, {}, "random MNIST-shaped arrays")
  programs, states, hps, flops = {}, {}, {}, {}
  kernels: dict[str, int | None] = dict.fromkeys(DIAGNOSTICS)
  for name, overrides in DIAGNOSTICS.items():
    configs = [sweep.apply_overrides(base, {**overrides, "seed": s}) for s in range(runs)]
    programs[name] = trainer.build_program(exp, configs[0], data.num_train)
    hps[name] = trainer.stack_hparams([trainer.run_hparams(c, exp) for c in configs], runs)
    states[name] = programs[name].init(hps[name], train)
    lowered = programs[name].train_epoch.lower(states[name], hps[name], train, np.int32(0))
    flops[name] = lowered.cost_analysis()["flops"]
    if repeats:
      programs[name] = lowered.compile()
      kernels[name] = step_kernels(programs[name].as_text())
      states[name], _ = programs[name](states[name], hps[name], train, np.int32(0))
      jax.block_until_ready(states[name])
  best = {name: float("inf") for name in DIAGNOSTICS}
  best_cpu = dict(best)
  for _ in range(repeats):
    for name, program in programs.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      states[name], metrics = program(states[name], hps[name], train, np.int32(1))
      jax.block_until_ready((states[name], metrics))
      best[name] = min(best[name], (time.perf_counter() - start) / steps)
      best_cpu[name] = min(best_cpu[name], (time.process_time() - start_cpu) / steps)
  return flops, kernels, best, best_cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=468)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--runs", default="1,16", help="runs at once for the diagnostics")
  parser.add_argument("--diagnostics_only", action="store_true",
                      help="time only the trainer's diagnostics")
  args = parser.parse_args()
  if args.diagnostics_only:
    print_diagnostics(args)
    return
  batch, steps = 128, args.steps
  key = jax.random.key(0)
  params = init_mlp(key, [784] + [50] * 20 + [10])
  xs = jax.random.uniform(jax.random.fold_in(key, 1), (steps * batch, 784))
  ys = jax.random.randint(jax.random.fold_in(key, 2), (steps * batch,), 0, 10)
  noise_key = jax.random.key(1)
  clip, sgd = optax.clip_by_global_norm(10.0), optax.sgd(0.1)
  variants = {
      "no noise": optax.chain(clip, sgd),
      "no noise, gradnoise clip": optax.chain(gradnoise.noise.clip_by_global_norm(10.0), sgd),
      "optax.add_noise": optax.chain(clip, optax.add_noise(0.01, 0.55, noise_key), sgd),
      "gradnoise (auto: fused)": gradnoise.noisy(sgd, eta=0.01, key=noise_key, clip_norm=10.0),
      "gradnoise (per_leaf)": gradnoise.noisy(sgd, eta=0.01, key=noise_key, clip_norm=10.0,
                                              draw="per_leaf"),
  }
  epochs = {name: make_epoch(tx, steps, batch) for name, tx in variants.items()}
  states = {name: tx.init(params) for name, tx in variants.items()}
  for name, fn in epochs.items():  # compile and warm up
    jax.block_until_ready(fn(params, states[name], xs, ys))
  best = {name: float("inf") for name in variants}
  for _ in range(args.repeats):  # interleave variants so drift hits all alike
    for name, fn in epochs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(params, states[name], xs, ys))
      best[name] = min(best[name], (time.perf_counter() - start) / steps)
  print(f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
  print(f"{'variant':28s} {'ms/step':>8s} {'ratio':>6s}")
  base = best["no noise"]
  for name, t in best.items():
    print(f"{name:28s} {t * 1e3:8.3f} {t / base:6.2f}x")
  print_diagnostics(args)


def print_diagnostics(args: argparse.Namespace) -> None:
  print(f"\n{'trainer epoch, diagnostics':28s} {'runs':>4s} {'MFLOP/step':>10s} {'ratio':>6s} "
        f"{'kernels':>7s} {'ms/step':>8s} {'ratio':>6s} {'CPU ms':>8s} {'ratio':>6s}")
  for runs in [int(r) for r in args.runs.split(",")]:
    flops, kernels, wall, cpu = trainer_epoch_costs(args.steps, runs, args.repeats)
    for name in DIAGNOSTICS:
      print(f"{name:28s} {runs:4d} {flops[name] / 1e6:10.2f} {flops[name] / flops['off']:6.3f} "
            f"{'-' if kernels[name] is None else kernels[name]:>7} "
            f"{wall[name] * 1e3:8.3f} {wall[name] / wall['off']:6.2f} "
            f"{cpu[name] * 1e3:8.3f} {cpu[name] / cpu['off']:6.2f}")


if __name__ == "__main__":
  main()
