"""Runs a config and its sweep into a work dir: the checks, the plan, training, outputs.

The command line (``python -m gradnoise.run``) and notebooks call the same two steps:

    sweep = launch.prepare(config, sweep_overrides, config_file="configs/x.py:quick")
    results = launch.train(sweep, "/tmp/wd")

or in one call, ``launch.run("configs/mnist_mlp.py:quick", "/tmp/wd", overrides={...})``.

:func:`prepare` checks everything that can be checked before a file is written: every
field of the base config and of every run of the sweep, the experiment module, the data
(loaded once per distinct data config) and the fields that depend on it. :func:`train`
then checks the work dir (writes nothing if it is refused), starts or resumes it and trains
the compile groups in order.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Sequence, TextIO

import ml_collections

from gradnoise import experiment as experiment_lib
from gradnoise import progress as progress_lib
from gradnoise import sweep as sweep_lib
from gradnoise import trainer
from gradnoise import workdir as workdir_lib
from gradnoise.errors import UsageError

Config = ml_collections.ConfigDict


@dataclasses.dataclass
class Sweep:
  """A checked sweep with its data loaded, ready to train.

  Attributes:
    experiment: the experiment all runs use.
    config: the base config (command-line overrides applied).
    overrides: the sweep, one dict of dotted field -> value per run ([] = base alone).
    runs: the resolved config of each run.
    groups: compile groups, in order of first appearance: lists of (run id, config).
    datasets: data key -> loaded Dataset (runs with equal data configs share one).
    config_file: where the config came from (for messages and config.json).
  """

  experiment: experiment_lib.Experiment
  config: Config
  overrides: list[dict[str, Any]]
  runs: list[Config]
  groups: list[list[tuple[int, Config]]]
  datasets: dict[str, experiment_lib.Dataset]
  config_file: str

  def data(self, config: Config) -> experiment_lib.Dataset:
    return self.datasets[data_key(config, self.experiment)]


def load_config_file(spec: str) -> tuple[Config, Callable[[], list[dict[str, Any]]], str]:
  """The config of ``path[:variant]``, a function giving its sweep, and the absolute path.

  Relative paths are taken from the current directory. Raises UsageError for a missing
  file or one whose ``get_config`` / import fails (with its exception's message).
  """
  path, _, arg = spec.partition(":")
  full = workdir_lib.resolve(path)
  if not os.path.isfile(full):
    raise UsageError(f"--config file {path} not found (looked for {full}, relative to the "
                     f"current directory {os.getcwd()}); accepted: a Python file defining "
                     "get_config(arg), e.g. configs/mnist_mlp.py:quick.")
  module = _import_config(full, spec)
  if not callable(getattr(module, "get_config", None)):
    raise UsageError(f"--config file {full} defines no get_config(arg).")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - the config file's own message is the best one
    raise UsageError(f"--config {spec}: {_one_line(e)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"--config {spec}: get_config returned {type(config).__name__}, "
                     "not an ml_collections.ConfigDict.")

  def get_sweep() -> list[dict[str, Any]]:
    if not callable(getattr(module, "get_sweep", None)):
      return []
    try:
      return list(module.get_sweep(arg) if arg else module.get_sweep())
    except Exception as e:  # noqa: BLE001
      raise UsageError(f"--config {spec}: get_sweep failed: {_one_line(e)}") from None

  return config, get_sweep, full


def variants(spec: str) -> tuple[str, ...]:
  """The variants a config file lists in ``VARIANTS`` (empty if none or unreadable)."""
  path = workdir_lib.resolve(spec.partition(":")[0])
  try:
    return tuple(getattr(_import_config(path, spec), "VARIANTS", ()))
  except UsageError:
    return ()


def _import_config(full: str, spec: str):
  module_spec = importlib.util.spec_from_file_location("_gradnoise_config", full)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001
    raise UsageError(f"--config {spec}: importing {full} failed: {_one_line(e)}") from None
  return module


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()).strip("'\"")
  return f"{type(e).__name__}: {text}" if not isinstance(e, (ValueError, UsageError)) else text


def data_key(config: Config, experiment: experiment_lib.Experiment) -> str:
  """Runs with equal keys share one loaded data set (traced data fields left out)."""
  traced = set(trainer.traced_fields(experiment))
  data = {k: v for k, v in config.data.to_dict().items() if f"data.{k}" not in traced}
  return json.dumps(data, sort_keys=True, default=str)


def prepare(config: Config, overrides: Sequence[dict[str, Any]] = (), *,
            config_file: str = "the config", cli_fields: Sequence[str] = ()) -> Sweep:
  """Checks a config and its sweep and loads their data; writes nothing.

  Args:
    config: the base config, command-line overrides applied.
    overrides: the sweep: one dict of dotted field -> value per run.
    config_file: where ``config`` came from (``path:variant``), for messages.
    cli_fields: the fields set on the command line, for messages and the rule that a
      field is not set both on the command line and by the sweep.

  Raises:
    UsageError: naming the field, its value, what is accepted and where the value came
      from (the command line, the sweep and which run, or the config file).
  """
  cli_fields = set(cli_fields)

  def source(name: str, run: int | None = None) -> str:
    if run is not None and name in overrides[run]:
      return f" (set by the sweep of {config_file}, run {run})"
    return f" (from --config.{name})" if name in cli_fields else f" (from {config_file})"

  def checked(error: UsageError, run: int | None = None) -> UsageError:
    if error.field and " (from " not in str(error) and " (set by the sweep" not in str(error):
      return UsageError(f"{str(error).rstrip('.')}{source(error.field, run)}.",
                        field=error.field)
    return error

  try:
    experiment = experiment_lib.load(config.experiment)
  except UsageError as e:
    raise checked(e) from None
  try:
    trainer.validate(config, experiment, source)
  except UsageError as e:
    raise checked(e) from None
  swept = sweep_lib.swept_fields(overrides)
  both = [f for f in swept if f in cli_fields]
  if both:
    name = both[0]
    values = list(dict.fromkeys(repr(o[name]) for o in overrides if name in o))
    raise UsageError(f"--config.{name} is also set by the sweep of {config_file} (to "
                     f"{', '.join(values)}), which would replace it; drop the flag, pass "
                     "--no_sweep to run the base config alone, or edit the sweep in the "
                     "config file.", field=name)
  runs = []
  for i, o in enumerate(overrides):
    try:
      run = sweep_lib.apply_overrides(config, o)
    except UsageError as e:
      raise UsageError(f"{e} (the sweep of {config_file}, run {i})", field=e.field) from None
    if run.experiment != config.experiment:
      raise UsageError(f"config field experiment{source('experiment', i)}: one sweep uses "
                       f"one experiment, got {config.experiment!r} and {run.experiment!r}.",
                       field="experiment")
    try:
      trainer.validate(run, experiment, lambda name, i=i: source(name, i))
    except UsageError as e:
      raise checked(e, i) from None
    runs.append(run)
  runs = runs or [sweep_lib.apply_overrides(config, {})]
  datasets = {}
  for i, run in enumerate(runs):
    key = data_key(run, experiment)
    if key not in datasets:
      datasets[key] = experiment.load_data(run)
    trainer.check_data(run, datasets[key],
                       lambda name, i=i: source(name, i if overrides else None))
  groups: dict[str, list[tuple[int, Config]]] = {}
  for run_id, run in enumerate(runs):
    groups.setdefault(trainer.group_key(run, experiment), []).append((run_id, run))
  return Sweep(experiment, config, [dict(o) for o in overrides], runs, list(groups.values()),
               datasets, config_file)


def print_plan(sweep: Sweep, out: TextIO) -> None:
  import jax
  print(f"plan: {len(sweep.runs)} runs in {len(sweep.groups)} compile group(s); "
        f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.default_backend()})", file=out)
  for i, group in enumerate(sweep.groups):
    config = group[0][1]
    data = sweep.data(config)
    print(f"  group {i}: {len(group)} runs, {config.num_epochs} epochs x "
          f"{data.num_train // config.batch_size} steps, batch {config.batch_size}, "
          f"{min(len(group), config.train.runs_per_batch)} runs at once", file=out)
  for description in dict.fromkeys(d.description for d in sweep.datasets.values()):
    print(f"  data: {description}", file=out)


def summary_table(workdir: str, metric: str = "test_accuracy") -> str:
  """Table 1 style: per setting, best and mean of ``metric`` over seeds, noise beside none."""
  from gradnoise import report
  analysis = report.analyze(report.load_runs([workdir]), metric)
  arms = report.arm_labels(analysis)
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


def _barrier(name: str) -> None:
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def train(sweep: Sweep, workdir: str, *, overwrite: bool = False,
          accept_env_change: bool = False, dry_run: bool = False,
          out: TextIO | None = None) -> dict[int, dict[str, Any]]:
  """Trains ``sweep`` into ``workdir``; returns run id -> final results.

  The work dir is checked first (a folder gradnoise did not write is used only if empty;
  a different sweep needs ``overwrite``; a resume under another environment needs
  ``accept_env_change``); nothing is written when it is refused, or with ``dry_run``.
  With the same sweep, finished runs are skipped and the others resume from their last
  checkpoint. Only process 0 writes results, metrics and TensorBoard files.
  """
  import jax
  out = out or sys.stdout
  primary = jax.process_index() == 0
  record = workdir_lib.sweep_record(sweep.config, sweep.overrides, sweep.config_file)
  wd = workdir_lib.WorkDir(workdir)
  resume = wd.check(record, overwrite, accept_env_change)
  if primary:
    print_plan(sweep, out)
  if dry_run:
    return {}
  _barrier("gradnoise:checked")
  if primary:
    wd.start(record, resume)
  _barrier("gradnoise:started")
  results = wd.read_results() if resume else {}
  if resume and primary:
    print(f"resuming in {wd.path}: {len(results)} of {len(sweep.runs)} runs finished",
          file=out)
  swept = [f for f in sweep_lib.swept_fields(sweep.overrides) if f != "seed"]
  columns = ["run"] + swept + ["seed"]
  finished = set(results)

  def on_batch_done(batch_results):
    results.update(batch_results)
    if primary:
      wd.write_results(columns, sweep.runs, results)

  for i, group in enumerate(sweep.groups):
    config = group[0][1]
    data = sweep.data(config)
    steps = len(group) * config.num_epochs * (data.num_train // config.batch_size)
    progress = progress_lib.GroupProgress(
        f"group {i}", steps, min(len(group), config.train.runs_per_batch),
        stream=out if primary else open(os.devnull, "w"))
    tensorboard = workdir_lib.TensorBoardWriter(wd.file(workdir_lib.TENSORBOARD_DIR))

    def on_metrics(row, tensorboard=tensorboard):
      if primary:
        wd.append_metrics(row)
        tensorboard.write(row)

    def on_restore(run_ids, epoch):
      if primary:
        wd.truncate_metrics(run_ids, epoch)

    callbacks = trainer.GroupCallbacks(on_metrics, on_batch_done, on_restore,
                                       progress.advance)
    try:
      trainer.train_group(sweep.experiment, group, data, callbacks,
                          checkpoint_dir=wd.file(workdir_lib.CHECKPOINT_DIR),
                          finished=finished)
    finally:
      progress.close()
      tensorboard.close()
  if primary:
    print(summary_table(wd.path, sweep.experiment.summary_metric), file=out)
    print(f"results: {wd.file(workdir_lib.RESULTS_FILE)}", file=out)
  _barrier("gradnoise:done")
  return results


def run(config: str | Config, workdir: str, *, overrides: dict[str, Any] | None = None,
        sweep: bool | Sequence[dict[str, Any]] = True, overwrite: bool = False,
        accept_env_change: bool = False, out: TextIO | None = None) -> list[dict[str, Any]]:
  """Runs a config (and its sweep) into ``workdir``; returns one dict per run.

  The same checks, outputs and resume as ``python -m gradnoise.run``.

  Args:
    config: a config file ``path[:variant]`` or a ConfigDict.
    workdir: the work dir (relative paths and ``~`` allowed).
    overrides: dotted field -> value applied to the base config (as ``--config.a.b``).
    sweep: True for the config file's ``get_sweep`` (none for a ConfigDict), False for
      the base config alone, or a list of override dicts.
    overwrite, accept_env_change: as the command-line flags.

  Returns:
    Per run, in run order: ``run``, the swept fields, and its final and best metrics and
    ``diverged`` (as results.csv).

  Raises:
    UsageError: for bad input, before anything is written.
  """
  if isinstance(config, str):
    base, get_sweep, _ = load_config_file(config)
    config_file = config
  else:
    base, get_sweep, config_file = config, (lambda: []), "the config"
  base = sweep_lib.apply_overrides(base, overrides or {}, what="overrides")
  if sweep is True:
    sweep_list = get_sweep()
  else:
    sweep_list = list(sweep) if sweep else []
  prepared = prepare(base, sweep_list, config_file=config_file,
                     cli_fields=tuple(overrides or ()))
  results = train(prepared, workdir, overwrite=overwrite,
                  accept_env_change=accept_env_change, out=out)
  rows = []
  for run_id in sorted(results):
    row = {"run": run_id, **(prepared.overrides[run_id] if prepared.overrides else {})}
    rows.append({**row, **results[run_id]})
  return rows
