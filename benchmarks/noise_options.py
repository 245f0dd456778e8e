"""Options for cheaper gradient noise, side by side with the noiseless step.

The setup of noise_overhead.py (MLP 784 -> 20 x 50 ReLU -> 10, batch 128, gradnoise's
global clip at 10, SGD 0.1, one epoch of 468 steps inside ``lax.scan``, min over
interleaved repeats). Every option keeps "the noise of update t is a pure function of
(key, t)"; the ones marked "same values" also draw exactly today's numbers:
  - today's draw (threefry, one fused normal per step);
  - the same values drawn for all steps of the epoch before the scan (vmap over t), so
    the random-number work is one large batched kernel outside the step;
  - the ``rbg`` and ``unsafe_rbg`` PRNG implementations for the noise key (other numbers;
    ``unsafe_rbg`` gives no guarantee of independence between folded keys);
  - the cost floor of the random bits (threefry bits without the normal transform, added
    as a float: not a valid noise, only to show where the time goes).
Run: ``python benchmarks/noise_options.py [--steps 468] [--repeats 5] [--clock process]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import optax

import gradnoise
from gradnoise import noise as noise_lib
from noise_overhead import init_mlp, loss_fn, make_epoch


def make_predrawn_epoch(key, eta, steps, batch):
  """Today's fused noise values for every step of the epoch, drawn before the scan."""
  clip = noise_lib.clip_by_global_norm(10.0)

  def epoch(params, xs, ys):
    leaves, treedef = jax.tree.flatten(params)
    noisy = [True] * len(leaves)

    def draw(t):
      return noise_lib._unit_noise(jax.random.fold_in(key, t), leaves, noisy, "fused")

    units = jax.vmap(draw)(jnp.arange(steps))

    def step(params, inputs):
      i, unit = inputs
      x = jax.lax.dynamic_slice_in_dim(xs, i * batch, batch)
      y = jax.lax.dynamic_slice_in_dim(ys, i * batch, batch)
      grads, _ = clip.update(jax.grad(loss_fn)(params, x, y), optax.EmptyState())
      std = jnp.sqrt(eta / (i + 1.0) ** 0.55)
      grads = jax.tree.map(lambda g, u: g + std * u, grads, jax.tree.unflatten(treedef, unit))
      return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), None  # SGD(0.1)

    params, _ = jax.lax.scan(step, params, (jnp.arange(steps), units))
    return params

  return jax.jit(epoch)


def bits_only(key: jax.Array) -> optax.GradientTransformation:
  """Adds threefry bits scaled to floats: the random-bit cost without the normal transform."""
  def update(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    sizes = [x.size for x in leaves]
    bits = jax.random.bits(jax.random.fold_in(key, state), (sum(sizes),))
    noise = bits.astype(jnp.float32) * 1e-12
    out, offset = [], 0
    for x, n in zip(leaves, sizes):
      out.append(x + noise[offset:offset + n].reshape(x.shape))
      offset += n
    return jax.tree.unflatten(treedef, out), state + 1

  return optax.GradientTransformation(lambda params: jnp.zeros([], jnp.int32), update)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=468)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                      help="process: this process's CPU time, steadier on a shared machine "
                      "(XLA:CPU runs these steps on one thread)")
  args = parser.parse_args()
  clock = time.perf_counter if args.clock == "wall" else time.process_time
  batch, steps = 128, args.steps
  key = jax.random.key(0)
  params = init_mlp(key, [784] + [50] * 20 + [10])
  xs = jax.random.uniform(jax.random.fold_in(key, 1), (steps * batch, 784))
  ys = jax.random.randint(jax.random.fold_in(key, 2), (steps * batch,), 0, 10)
  sgd, clip = optax.sgd(0.1), noise_lib.clip_by_global_norm(10.0)
  noisy = lambda k: gradnoise.noisy(sgd, eta=0.01, key=k, clip_norm=10.0)
  variants = {
      "no noise (gradnoise clip)": optax.chain(clip, sgd),
      "today: threefry, fused draw": noisy(jax.random.key(1)),
      "rbg key": noisy(jax.random.key(1, impl="rbg")),
      "unsafe_rbg key": noisy(jax.random.key(1, impl="unsafe_rbg")),
      "threefry bits only (floor)": optax.chain(clip, bits_only(jax.random.key(1)), sgd),
  }
  runs = {name: (lambda fn, s: lambda: fn(params, s, xs, ys))(
      make_epoch(tx, steps, batch), tx.init(params)) for name, tx in variants.items()}
  predrawn = make_predrawn_epoch(jax.random.key(1), 0.01, steps, batch)
  runs["today's values, drawn before the scan"] = lambda: predrawn(params, xs, ys)
  for fn in runs.values():  # compile and warm up
    jax.block_until_ready(fn())
  best = {name: float("inf") for name in runs}
  for _ in range(args.repeats):  # interleaved, so drift hits all alike
    for name, fn in runs.items():
      start = clock()
      jax.block_until_ready(fn())
      best[name] = min(best[name], (clock() - start) / steps)
  print(f"machine: {platform.machine()}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
  print(f"{'option':40s} {'ms/step':>8s} {'ratio':>6s}  ({args.clock} time)")
  base = best["no noise (gradnoise clip)"]
  for name, t in best.items():
    print(f"{name:40s} {t * 1e3:8.3f} {t / base:6.2f}x")


if __name__ == "__main__":
  main()
