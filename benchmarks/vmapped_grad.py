"""The gradient alone: XLA's jit(vmap(grad)) against PyTorch's torch.func vmap(grad).

Where the trainer's gap to torch.func ensembling comes from (``sweep_throughput.py``):
the 20x50 ReLU MLP's loss gradient for R runs at once, batch 128, each run its own
parameters and inputs, nothing else (no clipping, noise or update); the two interleaved,
min over repeats of 50 calls. Needs torch (not a gradnoise dependency).
Run: ``python benchmarks/vmapped_grad.py [--runs 8,32,64]``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

SIZES, BATCH = [784] + [50] * 20 + [10], 128


def xla_grad(runs: int, rng: np.random.Generator):
  """(jitted function, its arguments) for ``runs`` runs."""
  params = [(rng.normal(size=(runs, m, n)).astype(np.float32) * 0.1,
             np.zeros((runs, n), np.float32)) for m, n in zip(SIZES[:-1], SIZES[1:])]
  x = rng.random((runs, BATCH, SIZES[0]), dtype=np.float32)
  y = rng.integers(0, SIZES[-1], (runs, BATCH))

  def loss(p, x, y):
    h = x
    for i, (w, b) in enumerate(p):
      h = h @ w + b
      h = jax.nn.relu(h) if i < len(p) - 1 else h
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], 1))

  return jax.jit(jax.vmap(jax.grad(loss))), jax.device_put((params, x, y))


def torch_grad(runs: int, rng: np.random.Generator):
  import torch
  from torch import func

  def mlp():
    layers = []
    for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:])):
      layers += [torch.nn.Linear(m, n)] + ([torch.nn.ReLU()] if i < len(SIZES) - 2 else [])
    return torch.nn.Sequential(*layers)

  params, buffers = func.stack_module_state([mlp() for _ in range(runs)])
  base = mlp().to("meta")
  x = torch.from_numpy(rng.random((runs, BATCH, SIZES[0]), dtype=np.float32))
  y = torch.from_numpy(rng.integers(0, SIZES[-1], (runs, BATCH))).long()

  def loss(p, b, x, y):
    return torch.nn.functional.cross_entropy(func.functional_call(base, (p, b), (x,)), y)

  return func.vmap(func.grad(loss)), (params, buffers, x, y)


def seconds(fn, args, calls: int, block) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(*args)
  block(out)
  return (time.perf_counter() - start) / calls


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="8,32,64")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs")
  print(f"{'runs':>4s} {'XLA ms/step':>12s} {'torch.func ms/step':>19s} {'XLA / torch.func':>17s}")
  rng = np.random.default_rng(0)
  for runs in [int(r) for r in args.runs.split(",")]:
    xla, xla_args = xla_grad(runs, rng)
    tfn, t_args = torch_grad(runs, rng)
    jax.block_until_ready(xla(*xla_args))
    tfn(*t_args)
    best = [float("inf")] * 2
    for _ in range(args.repeats):
      best[0] = min(best[0], seconds(xla, xla_args, 50, jax.block_until_ready))
      best[1] = min(best[1], seconds(tfn, t_args, 50, lambda out: None))
    print(f"{runs:4d} {best[0] * 1e3:12.2f} {best[1] * 1e3:19.2f} {best[0] / best[1]:16.2f}x")


if __name__ == "__main__":
  main()
