r"""Trains a sweep of runs defined by a config file.

    python -m gradnoise.run --config configs/mnist_mlp.py:quick --workdir /tmp/quick \
        [--config.noise.eta=0.3 ...] [--no_sweep] [--overwrite]

The config file defines ``get_config(arg)`` and, for variants that sweep,
``get_sweep(arg)`` (a list of override dicts, see gradnoise.sweep). Command-line overrides
apply to the base config; sweep values apply on top. ``--no_sweep`` runs the base config
alone. Bad input prints one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from typing import Any, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from gradnoise import experiment as experiment_lib
from gradnoise import sweep as sweep_lib
from gradnoise import progress as progress_lib
from gradnoise import trainer, workdir as workdir_lib
from gradnoise.errors import UsageError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, path[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for config.json, results.csv, metrics.jsonl.")
flags.DEFINE_bool("no_sweep", False, "Run the base config alone, without its sweep.")
flags.DEFINE_bool("overwrite", False, "Replace a work dir that holds a different config.")
flags.DEFINE_bool("distributed", False, "Multi-process run: call jax.distributed.initialize() "
                  "with its cluster auto-detection (SLURM, Open MPI, Cloud TPU, "
                  "JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_string("coordinator_address", None, "Multi-process run: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process run: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index.")


def init_distributed() -> None:
  """Starts JAX's multi-controller runtime when asked to (before any computation)."""
  explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if not FLAGS.distributed and all(v is None for v in explicit):
    return
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only clusters
  jax.distributed.initialize(*explicit)


def barrier(name: str) -> None:
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def load_sweep(config_spec: str) -> list[dict[str, Any]]:
  """Calls ``get_sweep(arg)`` of the config file ``path[:arg]``, or returns []."""
  path, _, arg = config_spec.partition(":")
  spec = importlib.util.spec_from_file_location("_gradnoise_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    return []
  return module.get_sweep(arg) if arg else module.get_sweep()


def expand(config, sweep: Sequence[dict[str, Any]]) -> list:
  """The run configs: base config + each override dict (or the base config alone)."""
  return [sweep_lib.apply_overrides(config, o) for o in sweep] or [
      sweep_lib.apply_overrides(config, {})]


def validate(runs: Sequence) -> experiment_lib.Experiment:
  names = {c.experiment for c in runs}
  if len(names) > 1:
    raise UsageError(f"config field experiment: one sweep must use one experiment, "
                     f"got {sorted(names)}.")
  experiment = experiment_lib.get(names.pop())
  for config in runs:
    trainer.validate_common(config)
    experiment.validate(config)
  return experiment


def group_runs(runs: Sequence, experiment) -> list[list[tuple[int, Any]]]:
  """Compile groups, in order of first appearance: lists of (run id, config)."""
  groups: dict[str, list[tuple[int, Any]]] = {}
  for run_id, config in enumerate(runs):
    groups.setdefault(trainer.group_key(config, experiment), []).append((run_id, config))
  return list(groups.values())


def data_key(config, experiment) -> str:
  """Runs with equal keys share one loaded data set (traced data fields left out)."""
  traced = set(trainer.traced_fields(experiment))
  data = {k: v for k, v in config.data.to_dict().items() if f"data.{k}" not in traced}
  return json.dumps(data, sort_keys=True, default=str)


def print_plan(runs, groups, datasets, cli_swept: Sequence[str], experiment) -> None:
  import jax
  print(f"plan: {len(runs)} runs in {len(groups)} compile group(s); "
        f"devices: {jax.local_device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.default_backend()})")
  for i, group in enumerate(groups):
    config = group[0][1]
    data = datasets[data_key(config, experiment)]
    print(f"  group {i}: {len(group)} runs, {config.num_epochs} epochs x "
          f"{data.num_train // config.batch_size} steps, batch {config.batch_size}, "
          f"{min(len(group), config.train.runs_per_batch)} runs at once")
  for description in dict.fromkeys(d.description for d in datasets.values()):
    print(f"  data: {description}")
  if cli_swept:
    print(f"  note: the sweep sets {', '.join(cli_swept)}; its values replace the command "
          "line's for those fields")


def summary_table(workdir: str, metric: str = "test_accuracy") -> str:
  """Table 1 style: per setting, best and mean of ``metric`` over seeds, noise beside none."""
  from gradnoise import report
  analysis = report.analyze(report.load_runs([workdir]), metric)
  arms = sorted({a.arm.label for a in analysis.arms}, key=lambda l: l != "no noise")
  header = ["setting"] + [f"{arm}: {stat}" for arm in arms for stat in ("best", "mean", "runs")]
  rows = []
  for setting in analysis.settings:
    stats = {a.arm.label: a for a in analysis.arms if a.setting is setting}
    row = [setting.label]
    for arm in arms:
      a = stats.get(arm)
      row += [f"{a.best:.2%}", f"{a.mean:.2%}", str(a.runs)] if a else ["", "", ""]
    rows.append(row)
  lines = [f"{metric} over seeds (final):"]
  lines += ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header)] + rows]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}; pass options as --flag=value.")
  if FLAGS.workdir is None:
    raise UsageError("--workdir is required: the directory for the sweep's outputs.")
  init_distributed()
  import jax
  primary = jax.process_index() == 0
  config_spec = config_flags.get_config_filename(FLAGS["config"])
  config = FLAGS.config
  sweep = [] if FLAGS.no_sweep else load_sweep(config_spec)
  runs = expand(config, sweep)
  experiment = validate(runs)
  cli_overrides = config_flags.get_override_values(FLAGS["config"])
  cli_swept = [k for k in sweep_lib.swept_fields(sweep) if k in cli_overrides]
  record = workdir_lib.sweep_record(config, sweep, config_spec)
  workdir = workdir_lib.WorkDir(FLAGS.workdir)
  workdir.check(record, FLAGS.overwrite)
  groups = group_runs(runs, experiment)
  datasets = {}
  for config_i in runs:
    key = data_key(config_i, experiment)
    if key not in datasets:
      datasets[key] = experiment.load_data(config_i)
  if primary:
    print_plan(runs, groups, datasets, cli_swept, experiment)

  resume = workdir.stored_record() is not None and not FLAGS.overwrite
  barrier("gradnoise:checked")
  if primary:
    workdir.start(record, resume)
  barrier("gradnoise:started")
  results = workdir.read_results() if resume else {}
  if resume and primary:
    print(f"resuming in {workdir.path}: {len(results)} of {len(runs)} runs finished")
  fields = ["run"] + [f for f in sweep_lib.swept_fields(sweep) if f != "seed"] + ["seed"]
  finished = set(results)

  def on_batch_done(batch_results):
    results.update(batch_results)
    if primary:
      workdir.write_results(fields, runs, results)

  for i, group in enumerate(groups):
    config = group[0][1]
    data = datasets[data_key(config, experiment)]
    steps = len(group) * config.num_epochs * (data.num_train // config.batch_size)
    progress = progress_lib.GroupProgress(
        f"group {i}", steps, min(len(group), config.train.runs_per_batch),
        stream=None if primary else open(os.devnull, "w"))
    tensorboard = workdir_lib.TensorBoardWriter(workdir.file("tensorboard"))

    def on_metrics(row, tensorboard=tensorboard):
      if primary:
        workdir.append_metrics(row)
        tensorboard.write(row)

    def on_restore(run_ids, epoch):
      if primary:
        workdir.truncate_metrics(run_ids, epoch)

    callbacks = trainer.GroupCallbacks(on_metrics, on_batch_done, on_restore,
                                       progress.advance)
    try:
      trainer.train_group(experiment, group, data, callbacks,
                          checkpoint_dir=workdir.file("checkpoints"), finished=finished)
    finally:
      progress.close()
      tensorboard.close()
  if primary:
    print(summary_table(workdir.path, experiment.summary_metric))
    print(f"results: {workdir.file(workdir_lib.RESULTS_FILE)}")
  barrier("gradnoise:done")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with bad flags and config files reported as one line, exit 2."""
  try:
    rest = FLAGS(argv)
    if not FLAGS["config"].present:
      raise UsageError("--config is required: a config file, path[:variant].")
    path = config_flags.get_config_filename(FLAGS["config"]).partition(":")[0]
    if not os.path.isfile(path):
      raise UsageError(f"--config file {path} not found; accepted: a Python file defining "
                       "get_config(arg), e.g. configs/mnist_mlp.py:quick.")
    FLAGS.config  # loads the config file now, so its errors land here
    return rest
  except Exception as e:  # noqa: BLE001 - any failure to read flags or config is bad input
    message = str(e).replace("\\n", " ").replace("\n", " ").strip("'\" ")
    if isinstance(e, AttributeError):  # an override names a field the config lacks
      overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
      message = (f"unknown config field among {', '.join(overrides)}: "
                 + message.replace("\\'", "'"))
    elif "Traceback" in message:  # config file raised: keep its exception's message
      message = "--config: " + re.split(r"\w+Error: ", message)[-1]
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _main(argv: Sequence[str]) -> None:
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  try:
    main(argv)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def cli() -> None:
  app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
