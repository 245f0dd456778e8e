"""Cost of gradient noise per training step: no noise vs optax.add_noise vs gradnoise.

Issue setup: MLP 784 -> 20 x 50 ReLU -> 10, batch 128, clip_by_global_norm(10) then
SGD(0.1); one epoch of 468 steps inside ``lax.scan``; every variant measured side by side
in this process (min over repeats). ``gradnoise.noisy`` clips with gradnoise's
overflow-safe global clip, also timed alone without noise.
Run: ``python benchmarks/noise_overhead.py``.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import optax

import gradnoise


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=468)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
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


if __name__ == "__main__":
  main()
