"""Run-epochs per second of the 20x50 MNIST MLP: batched trainer vs per-run loops.

Side by side in one process, on full-size MNIST arrays (60000 x 784, random values:
speed does not depend on the pixel values), batch 128 (468 steps per epoch), SGD 0.1,
no clipping, noise eta 0.01:
  - gradnoise trainer, one compile group with 1, 8 and 32 runs (jit(vmap(scan))), one
    epoch per call, timed after a warm-up epoch, with ``train.diagnostics`` off (the same
    work as the baselines below); at the largest run count also with the diagnostics on
    (the default: norms of the gradient, clipped gradient and noise at every step);
  - a plain per-run loop: one jitted optax step per batch, called from Python;
  - PyTorch eager with the same model and optimizer, one run at a time, and PyTorch's
    ``torch.func`` ensembling of the same runs (stacked module state, vmap over runs), if
    torch is installed (not a gradnoise dependency).
Run: ``python benchmarks/sweep_throughput.py [--runs 1,8,32]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import gradnoise
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import mnist_mlp as mnist_configs  # noqa: E402
from experiments import mnist_mlp  # noqa: E402
from gradnoise import experiment, fields, sweep, trainer  # noqa: E402

N_TRAIN, BATCH = 60000, 128


def mnist_sized_data() -> experiment.Dataset:
  rng = np.random.default_rng(0)
  return experiment.Dataset(
      train={"x": rng.random((N_TRAIN, 784), dtype=np.float32),
             "y": rng.integers(0, 10, N_TRAIN).astype(np.int32)},
      evals={"test": {"x": rng.random((1000, 784), dtype=np.float32),
                      "y": rng.integers(0, 10, 1000).astype(np.int32)}},
      description="random MNIST-sized arrays")


def base_config(diagnostics: bool = False):
  config = fields.complete(mnist_configs.get_config("table1"),
                           {**trainer.FIELDS, **mnist_mlp.EXPERIMENT.fields})
  return sweep.apply_overrides(config, {"model.init": "he", "noise.eta": 0.01,
                                        "train.diagnostics": diagnostics})


def trainer_seconds_per_run_epoch(num_runs: int, data: experiment.Dataset,
                                  diagnostics: bool = False) -> float:
  config = base_config(diagnostics)
  program = trainer.build_program(mnist_mlp.EXPERIMENT, config, data.num_train)
  hps = [trainer.run_hparams(sweep.apply_overrides(config, {"seed": s}), mnist_mlp.EXPERIMENT)
         for s in range(num_runs)]
  mesh = trainer.run_mesh()
  hp = trainer.to_global(trainer.stack_hparams(hps, trainer.padded_size(num_runs, mesh.size)),
                         NamedSharding(mesh, PartitionSpec("runs")))
  train = trainer.to_global(data.train, NamedSharding(mesh, PartitionSpec()))
  state = program.init(hp, train)
  state, _ = program.train_epoch(state, hp, train, np.int32(0))  # compile + warm up
  jax.block_until_ready(state)
  start = time.perf_counter()
  state, metrics = program.train_epoch(state, hp, train, np.int32(1))
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / num_runs


def per_run_loop_seconds_per_run_epoch(data: experiment.Dataset) -> float:
  config = base_config()
  hp = trainer.run_hparams(config, mnist_mlp.EXPERIMENT)
  config = trainer.group_config(config, mnist_mlp.EXPERIMENT)
  sample = {k: v[:BATCH] for k, v in data.train.items()}  # flax infers shapes from it
  params = mnist_mlp.init_params(jax.random.key(0), sample, hp, config)
  tx = gradnoise.noisy(optax.sgd(0.1), eta=0.01, key=jax.random.key(1))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    grads = jax.grad(lambda p: mnist_mlp.loss_fn(p, {"x": x, "y": y}, jax.random.key(2), hp,
                                                 config)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  x, y = jax.device_put(data.train["x"]), jax.device_put(data.train["y"])
  order = np.random.default_rng(0).permutation(N_TRAIN)
  steps = N_TRAIN // BATCH
  params, opt_state = step(params, opt_state, x[:BATCH], y[:BATCH])  # compile
  jax.block_until_ready(params)
  start = time.perf_counter()
  for i in range(steps):
    idx = order[i * BATCH:(i + 1) * BATCH]
    params, opt_state = step(params, opt_state, x[idx], y[idx])
  jax.block_until_ready(params)
  return time.perf_counter() - start


def torch_mlp():
  """The 20x50 ReLU MLP as a torch.nn.Sequential."""
  import torch
  layers = []
  sizes = [784] + [50] * 20 + [10]
  for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
    layers.append(torch.nn.Linear(m, n))
    if i < len(sizes) - 2:
      layers.append(torch.nn.ReLU())
  return torch.nn.Sequential(*layers)


def torch_seconds_per_run_epoch(data: experiment.Dataset, threads: int) -> float | None:
  try:
    import torch
  except ImportError:
    return None
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = torch_mlp()
  opt = torch.optim.SGD(model.parameters(), lr=0.1)
  x, y = torch.from_numpy(data.train["x"]), torch.from_numpy(data.train["y"]).long()
  order = torch.randperm(N_TRAIN)
  start = time.perf_counter()
  for i in range(N_TRAIN // BATCH):
    idx = order[i * BATCH:(i + 1) * BATCH]
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
    loss.backward()
    with torch.no_grad():  # the same annealed noise, sigma_0^2 = 0.01
      for p in model.parameters():
        p.grad.add_(torch.randn_like(p.grad) * 0.1)
    opt.step()
  return time.perf_counter() - start


def torch_func_seconds_per_run_epoch(data: experiment.Dataset, num_runs: int,
                                     threads: int) -> float | None:
  """PyTorch's own way to batch runs: ``torch.func`` ensembling. The runs' module states
  stacked (``stack_module_state``), one ``vmap(grad(functional_call))`` per step over all
  runs, each run with its own batch order and Gaussian noise, then an SGD update of the
  stacked parameters; one epoch timed after a warm-up step."""
  try:
    import torch
    from torch import func
  except ImportError:
    return None
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  models = [torch_mlp() for _ in range(num_runs)]
  params, buffers = func.stack_module_state(models)
  base = torch_mlp().to("meta")

  def loss(p, b, x, y):
    return torch.nn.functional.cross_entropy(func.functional_call(base, (p, b), (x,)), y)

  grads_of_runs = func.vmap(func.grad(loss))
  x, y = torch.from_numpy(data.train["x"]), torch.from_numpy(data.train["y"]).long()
  orders = torch.stack([torch.randperm(N_TRAIN) for _ in range(num_runs)])

  def step(i):
    idx = orders[:, i * BATCH:(i + 1) * BATCH]
    grads = grads_of_runs(params, buffers, x[idx], y[idx])
    with torch.no_grad():  # SGD 0.1 on the gradient plus noise of std 0.1 (eta 0.01)
      for name, p in params.items():
        p.sub_(0.1 * (grads[name] + 0.1 * torch.randn_like(p)))

  step(0)  # warm-up
  start = time.perf_counter()
  for i in range(N_TRAIN // BATCH):
    step(i)
  return (time.perf_counter() - start) / num_runs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="1,8,32", help="comma list of runs per group")
  parser.add_argument("--trainer_only", action="store_true",
                      help="skip the per-run loop and PyTorch baselines")
  args = parser.parse_args()
  data = mnist_sized_data()
  figures = {}
  counts = [int(r) for r in args.runs.split(",")]
  for n in counts:
    figures[f"gradnoise trainer, {n} runs"] = trainer_seconds_per_run_epoch(n, data)
  figures[f"gradnoise trainer + diagnostics, {max(counts)} runs"] = (
      trainer_seconds_per_run_epoch(max(counts), data, diagnostics=True))
  if not args.trainer_only:
    figures["per-run loop of jitted steps"] = per_run_loop_seconds_per_run_epoch(data)
  if not args.trainer_only:
    # Measured with 1 thread and with torch's default; the faster one is the reference
    # (an oversubscribed default thread pool can be 100x slower on a shared 2-core CPU).
    times = [t for t in (torch_seconds_per_run_epoch(data, n)
                         for n in sorted({1, os.cpu_count() or 1})) if t is not None]
    if times:
      figures["PyTorch eager"] = min(times)
    for n in [int(r) for r in args.runs.split(",") if int(r) > 1]:
      times = [t for t in (torch_func_seconds_per_run_epoch(data, n, threads)
                           for threads in sorted({1, os.cpu_count() or 1})) if t is not None]
      if times:
        figures[f"PyTorch torch.func ensemble, {n} runs"] = min(times)
  print(f"machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}"
        f", jax {jax.__version__}")
  name = next((n for n in ("PyTorch eager", "per-run loop of jitted steps") if n in figures),
              next(iter(figures)))
  reference = figures[name]
  print(f"{'variant':42s} {'s/run-epoch':>11s} {'run-epochs/s':>12s} "
        f"{'vs ' + name[:14]:>18s} {'vs torch.func':>14s}")
  for variant, seconds in figures.items():
    runs = variant.rsplit(", ", 1)[-1]
    ensemble = figures.get(f"PyTorch torch.func ensemble, {runs}")
    versus = f"{ensemble / seconds:13.2f}x" if ensemble and "trainer" in variant else ""
    print(f"{variant:42s} {seconds:11.3f} {1 / seconds:12.2f} {reference / seconds:17.2f}x "
          f"{versus:>14s}")


if __name__ == "__main__":
  main()
