"""Where an epoch of a compile group goes: training step parts, evaluation, compilation.

For ``--config=FILE:VARIANT`` it takes ``--runs`` runs of the first compile group (spread
evenly over the sweep, so a multi-task group keeps its task mix), builds the trainer's
programs for them and times, side by side in this process (min over ``--repeats``):
  - the training epoch (``jit(vmap(scan(train_step)))``), and one evaluation, whose cost per
    epoch is divided by ``train.eval_every_epochs``;
  - the same epoch's parts, each scanned over the epoch's steps for the same runs: taking
    the batches (the gather of each run's task and rows), the loss and its gradient, and the
    optimizer (clip -> noise -> update on a gradient-shaped input);
  - memnet only: the random time indices of memnet.memory_times (an argsort per step).
Ratios are to the training epoch; the parts need not add up (XLA fuses across them).
Run: ``python benchmarks/profile_epoch.py --config=configs/memnet_babi.py:table2
--config.data.path=../shared/data/babi/tasks_1-20_v1-2 --runs=80``.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from gradnoise import launch, overrides, trainer


def best_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile and warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--runs", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=2)
  args, rest = parser.parse_known_args()
  base, get_sweep, _ = launch.load_config_file(args.config)
  cli = dict(a[2:].split("=", 1) for a in rest)
  from gradnoise import experiment as experiment_lib, fields
  experiment = experiment_lib.load(base.experiment)
  declared = {**trainer.FIELDS, **experiment.fields}
  base = overrides.apply(fields.complete(base, declared), {k[len("config."):]: v
                                                            for k, v in cli.items()},
                         declared, origin=args.config)
  sweep = launch.prepare(base, get_sweep())
  group = sweep.groups[0]
  runs = [group[i][1] for i in np.linspace(0, len(group) - 1, args.runs).astype(int)]
  config, data = runs[0], sweep.data(runs[0])
  spec = trainer.GroupSpec(experiment, trainer.group_config(config, experiment),
                           data.num_train, config.batch_size, bool(data.num_tasks))
  program = trainer.build_program(experiment, config, data.num_train, bool(data.num_tasks))
  hp = jax.tree.map(jnp.asarray, trainer.stack_hparams(
      [trainer.run_hparams(r, experiment) for r in runs], len(runs)))
  train = jax.tree.map(jnp.asarray, data.train)
  evals = jax.tree.map(jnp.asarray, trainer.eval_batches(data, config.train.eval_batch_size))
  epoch = np.int32(1)
  state = program.init(hp, train)
  jax.block_until_ready(state)

  start = time.perf_counter()
  compiled_train = program.train_epoch.lower(state, hp, train, epoch).compile()
  compile_train = time.perf_counter() - start
  start = time.perf_counter()
  compiled_eval = program.evaluate.lower(state, hp, evals, epoch).compile()
  compile_eval = time.perf_counter() - start

  def train_epoch():
    fresh = jax.tree.map(jnp.copy, state)  # the epoch donates its state
    return compiled_train(fresh, hp, train, epoch)

  steps = spec.steps

  def orders(h):
    return trainer.batch_order({**h, "epoch": epoch}, epoch, spec.num_train, steps,
                               spec.batch_size)

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def gather(h, train):
    return jax.lax.scan(lambda c, idx: (c + sum(jnp.sum(v.astype(jnp.float32)) for v in
                                                trainer.take(spec, train, h, idx).values()),
                                        None), 0.0, orders(h))[0]

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, 0, 0, None))
  def loss_and_grad(params, extra, h, train):
    def step(c, inputs):
      idx, n = inputs
      batch = trainer.take(spec, train, h, idx)
      (loss, _), grads = jax.value_and_grad(experiment.loss_fn, has_aux=True)(
          params, batch, jax.random.fold_in(jax.random.key(0), n),
          {**h, **extra, "epoch": epoch}, spec.config)
      return c + loss + sum(jnp.sum(g) for g in jax.tree.leaves(grads)), None
    return jax.lax.scan(step, 0.0, (orders(h), jnp.arange(steps)))[0]

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, 0, 0))
  def optimizer(params, opt_state, h):
    tx = trainer.make_optimizer(spec.config, {**h, "epoch": epoch},
                                jax.random.key(1), steps)

    def step(carry, n):
      params, opt_state = carry
      grads = jax.tree.map(lambda p: p * 1e-3 + n.astype(p.dtype), params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (jax.tree.map(jnp.add, params, updates), opt_state), None
    return jax.lax.scan(step, (params, opt_state), jnp.arange(steps))[0]

  figures = {
      "training epoch": best_time(train_epoch, args.repeats),
      "  taking the batches (gather)": best_time(lambda: gather(hp, train), args.repeats),
      "  loss and gradient": best_time(
          lambda: loss_and_grad(state.params, state.extra, hp, train), args.repeats),
      "  optimizer (clip, noise, update)": best_time(
          lambda: optimizer(state.params, state.opt_state, hp), args.repeats),
  }
  if experiment.name == "memnet":
    from experiments import memnet
    stories = train["stories"]
    present = jnp.any(stories[0, :spec.batch_size] > 0, -1)

    @jax.jit
    @jax.vmap
    def times(h):
      return jax.lax.scan(lambda c, n: (c + jnp.sum(memnet.memory_times(
          present, jax.random.fold_in(jax.random.key(0), n), h["random_time"])), None),
                          0, jnp.arange(steps))[0]
    figures["  memnet.memory_times (argsort)"] = best_time(lambda: times(hp), args.repeats)
  evaluation = best_time(lambda: compiled_eval(state, hp, evals, epoch), args.repeats)
  every = config.train.eval_every_epochs
  figures[f"evaluation / {every} (per epoch)"] = evaluation / every
  print(f"{args.config}: {len(runs)} runs of group 0 ({len(group)} runs), {steps} steps of "
        f"batch {spec.batch_size}; {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"compile: training epoch {compile_train:.1f} s, evaluation {compile_eval:.1f} s")
  memory = compiled_train.memory_analysis()
  print(f"training epoch memory: {memory.temp_size_in_bytes / 2**20:.0f} MiB temporaries, "
        f"{memory.argument_size_in_bytes / 2**20:.0f} MiB arguments")
  base_time = figures["training epoch"]
  print(f"{'part':40s} {'s':>9s} {'ratio':>7s} {'s/run-epoch':>12s}")
  for name, seconds in figures.items():
    print(f"{name:40s} {seconds:9.3f} {seconds / base_time:7.2f} {seconds / len(runs):12.4f}")


if __name__ == "__main__":
  main()
