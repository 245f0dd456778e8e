"""How many CPU devices ``gradnoise.run`` splits the host into by default.

The trainer shards a compile group's run axis over all devices (``trainer.run_mesh``).
XLA:CPU runs one program's small batched matmuls on about one core, so on a multi-core
host with one device most cores idle. Forcing N host devices (JAX's ``jax_num_cpu_devices``,
as XLA's ``--xla_force_host_platform_device_count``) runs N shards of the run axis at once,
one per core; but each shard then gets fewer runs, each program pays its own per-step
overhead, and the runs are padded to a multiple of N (``trainer.padded_size``), so a split
only pays with enough runs per device.

Measured with ``benchmarks/sweep_throughput.py --trainer_only`` under 1 and 2 forced host
devices (``benchmarks/forced_devices.sh``; 20x50 MLP on MNIST-sized arrays, batch 128; the
2-core x86_64 machine, quiet, 2026-11-28), run-epochs per second, 1 device -> 2 devices:
8 runs 2.57 -> 1.74 (0.68x), 32 runs 1.88 -> 2.46 (1.31x). One run on 2 devices is padded
to 2, twice the work. A repeat on 2026-11-30 could not be timed: 20-30 other processes
shared the 2 cores, and a 2-thread process then simply gets twice the CPU share.
Hence the rule (:func:`auto_host_devices`): as many devices as cores, but at least
``MIN_RUNS_PER_DEVICE`` = 16 runs at once on each (16 per device won at 32 runs; 4 per
device lost at 8 runs; sizes in between are unmeasured, so they stay on one device).

A work dir being resumed keeps the device count it was started with (a different count
would be an environment change, see ``--accept_env_change``). A process that set the count
itself (``XLA_FLAGS`` with the flag above, or ``JAX_NUM_CPU_DEVICES``), a multi-process
run, and a process whose JAX backends already started keep their devices. Results equal
the 1-device results to float tolerance (runs are padded differently); at equal device
count they are bitwise identical.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping, Sequence

import ml_collections

from gradnoise.errors import UsageError

MIN_RUNS_PER_DEVICE = 16
HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def host_cpus() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def auto_host_devices(runs_at_once: int, cpus: int) -> int:
  """The default number of host devices for a process training ``runs_at_once`` runs at
  once on ``cpus`` cores: one per core, each with at least ``MIN_RUNS_PER_DEVICE`` runs."""
  return max(1, min(cpus, runs_at_once // MIN_RUNS_PER_DEVICE))


def user_setting(environ: Mapping[str, str]) -> str | None:
  """How the environment already sets the host device count, or None."""
  if HOST_DEVICE_FLAG in environ.get("XLA_FLAGS", ""):
    return f"XLA_FLAGS={environ['XLA_FLAGS']}"
  if environ.get("JAX_NUM_CPU_DEVICES"):
    return f"JAX_NUM_CPU_DEVICES={environ['JAX_NUM_CPU_DEVICES']}"
  return None


def largest_batch(config: ml_collections.ConfigDict, sweep: Sequence[dict[str, Any]]) -> int:
  """Runs the largest compile group of ``config`` and its sweep trains at once: its size,
  or ``train.runs_per_batch`` where set. 1 if the sweep cannot be resolved (``launch.prepare``
  then reports why)."""
  from gradnoise import experiment as experiment_lib
  from gradnoise import sweep as sweep_lib
  from gradnoise import trainer
  try:
    experiment = experiment_lib.load(config.experiment)
    runs = [sweep_lib.apply_overrides(config, o) for o in sweep] or [config]
    keys = [trainer.group_key(run, experiment) for run in runs]
  except Exception:  # noqa: BLE001 - a bad config or sweep is reported by launch.prepare
    return 1
  first = dict(zip(reversed(keys), reversed(runs)))  # each group's first run
  sizes = collections.Counter(keys)
  return max(min(n, first[key].train.get("runs_per_batch") or n) for key, n in sizes.items())


def recorded_host_devices(workdir: str) -> int | None:
  """The CPU device count a gradnoise work dir was started with (its config.json), or None
  (no such work dir, or one started on an accelerator)."""
  from gradnoise import workdir as workdir_lib
  try:
    with open(os.path.join(workdir_lib.resolve(workdir), workdir_lib.CONFIG_FILE)) as f:
      environment = json.load(f)["environment"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  if environment.get("backend") != "cpu" or not isinstance(environment.get("device_count"),
                                                           int):
    return None
  return environment["device_count"]


def configure(setting: str, runs_at_once: int, workdir: str | None = None,
              environ: Mapping[str, str] = os.environ) -> int | None:
  """Sets the host device count before JAX starts its backends; returns it, or None when
  left as it is (set by the environment, or JAX already started).

  Args:
    setting: ``auto`` (:func:`auto_host_devices`; a work dir being resumed keeps the count it
      was started with) or a positive count.
    runs_at_once: the runs the largest group trains at once (:func:`largest_batch`).
    workdir: the work dir, if any.
    environ: the process environment.

  Raises:
    UsageError: a bad ``setting``, or a count that the environment also sets.
  """
  import jax
  from jax._src import xla_bridge  # whether the backends started: no public API for it
  started = getattr(xla_bridge, "backends_are_initialized", lambda: False)
  if setting != "auto" and not (setting.isdigit() and int(setting) > 0):
    raise UsageError(f"--host_devices={setting!r}; accepted: auto or a positive integer.")
  preset = user_setting(environ)
  if setting == "auto":
    if preset or started():
      return None
    recorded = recorded_host_devices(workdir) if workdir else None
    count = recorded or auto_host_devices(runs_at_once, host_cpus())
  else:
    if preset:
      raise UsageError(f"--host_devices={setting} while {preset} also sets the host device "
                       "count; drop one of them.")
    count = int(setting)
    if started():
      if jax.local_device_count("cpu") != count:
        raise UsageError(f"--host_devices={setting}: JAX already started in this process "
                         f"with {jax.local_device_count('cpu')} CPU device(s).")
      return count
  jax.config.update("jax_num_cpu_devices", count)
  return count


# Share of a device's memory the runs trained at once may fill by default (the rest: the
# allocator's fragmentation, XLA's estimate being an estimate, other programs).
MEMORY_SHARE = 0.8


def device_memory_bytes() -> int:
  """Memory of one device: the accelerator allocator's limit less what is in use, or for
  CPU devices the host's RAM divided among them."""
  import jax
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return ram // jax.local_device_count(device.platform)


def memory_per_run(experiment: Any, config: ml_collections.ConfigDict,
                   data: Any) -> tuple[int, int]:
  """XLA's compiled memory estimate of a group's programs for one run on one device:
  (bytes per run, bytes shared by all runs: the training and eval data), the larger of the
  training epoch and the evaluation. Compiles both programs for one run (shapes only)."""
  import jax
  import numpy as np
  from gradnoise import trainer
  shape = lambda tree: jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), v.dtype), tree)
  nbytes = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize
                            for x in jax.tree.leaves(tree))
  hp = shape(trainer.stack_hparams([trainer.run_hparams(config, experiment)], 1))
  train = shape(data.train)
  evals = shape(trainer.eval_batches(data, config.train.eval_batch_size))
  program = trainer.build_program(experiment, config, data.num_train, bool(data.num_tasks))
  state = jax.eval_shape(program.init, hp, train)
  epoch = jax.ShapeDtypeStruct((), np.int32)
  per_run = 0
  for fn, shared in ((program.train_epoch, train), (program.evaluate, evals)):
    analysis = fn.lower(state, hp, shared, epoch).compile().memory_analysis()
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
    per_run = max(per_run, total - nbytes(shared))
  return max(per_run, 1), nbytes(train) + nbytes(evals)


def auto_runs_per_batch(num_runs: int, per_run: int, shared: int, memory: int,
                        num_devices: int) -> int:
  """Runs to train at once: on each of ``num_devices`` devices, as many runs of ``per_run``
  bytes as ``MEMORY_SHARE`` of its ``memory`` holds besides the ``shared`` data (every device
  holds all of it), at least one; at most ``num_runs`` in all."""
  per_device = max(1, int((MEMORY_SHARE * memory - shared) // per_run))
  return max(1, min(num_runs, per_device * num_devices))


def runs_per_batch(experiment: Any, config: ml_collections.ConfigDict, data: Any,
                   num_runs: int) -> int:
  """``train.runs_per_batch`` of a group of ``num_runs`` runs: the config's value where set,
  else chosen from the device's memory and the group's compiled memory estimate."""
  import jax
  explicit = config.train.get("runs_per_batch")
  if explicit:
    return explicit
  per_run, shared = memory_per_run(experiment, config, data)
  return auto_runs_per_batch(num_runs, per_run, shared, device_memory_bytes(),
                             jax.device_count())
