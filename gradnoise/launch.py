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
import hashlib
import importlib.util
import json
import os
import sys
import traceback
from typing import Any, Callable, Sequence, TextIO

import ml_collections
import numpy as np

from gradnoise import devices
from gradnoise import experiment as experiment_lib
from gradnoise import fields
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
  file, one whose import, ``get_config`` or ``get_sweep`` fails (with its exception's
  message), or one that returns something else than a ConfigDict / a list of dicts.
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
  config = _call(module.get_config, arg, spec, "get_config", module)
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"--config {spec}: get_config returned {type(config).__name__}, "
                     "not an ml_collections.ConfigDict.")

  def get_sweep() -> list[dict[str, Any]]:
    if not callable(getattr(module, "get_sweep", None)):
      return []
    sweep = _call(module.get_sweep, arg, spec, "get_sweep", module)
    if not isinstance(sweep, (list, tuple)) or not all(
        isinstance(o, dict) and all(isinstance(k, str) for k in o) for o in sweep):
      raise UsageError(f"--config {spec}: get_sweep returned {str(sweep)[:80]!r}; accepted: "
                       "a list of dicts of dotted field names to values, e.g. "
                       "gradnoise.sweep.product(values('noise.eta', [0, 0.01]), seeds(4)).")
    return list(sweep)

  return config, get_sweep, full


def _call(fn: Callable[..., Any], arg: str, spec: str, name: str, module) -> Any:
  """``fn(arg)`` (``fn()`` without a variant), its failures as one-line UsageErrors."""
  try:
    return fn(arg) if arg else fn()
  except TypeError as e:
    if not arg and "required positional argument" in str(e):
      listed = getattr(module, "VARIANTS", ())
      raise UsageError(f"--config {spec}: {name} needs a variant: --config={spec}:VARIANT"
                       + (f" (variants: {', '.join(listed)})" if listed else "")) from None
    raise UsageError(f"--config {spec}: {name} failed: {_one_line(e)}") from None
  except (Exception, SystemExit) as e:  # noqa: BLE001 - the file's own message is the best
    raise UsageError(f"--config {spec}: {name} failed: {_one_line(e)}") from None


def variants(spec: str) -> tuple[str, ...]:
  """The variants a config file lists in ``VARIANTS``; UsageError if it cannot be read."""
  path = workdir_lib.resolve(spec.partition(":")[0])
  if not os.path.isfile(path):
    raise UsageError(f"--config file {spec.partition(':')[0]} not found (looked for {path}).")
  return tuple(getattr(_import_config(path, spec), "VARIANTS", ()))


def _import_config(full: str, spec: str):
  module_spec = importlib.util.spec_from_file_location("_gradnoise_config", full)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except (Exception, SystemExit) as e:  # noqa: BLE001
    raise UsageError(f"--config {spec}: importing {full} failed: {_one_line(e)}") from None
  return module


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return text if isinstance(e, (ValueError, UsageError)) else f"{type(e).__name__}: {text}"


def data_key(config: Config, experiment: experiment_lib.Experiment) -> str:
  """Runs with equal keys share one loaded data set (traced data fields left out)."""
  traced = set(trainer.traced_fields(experiment))
  section = config.get("data")
  fields_ = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else {}
  data = {k: v for k, v in fields_.items() if f"data.{k}" not in traced}
  return json.dumps(data, sort_keys=True, default=str)


def prepare(config: Config, overrides: Sequence[dict[str, Any]] = (), *,
            config_file: str = "the config", cli_fields: Sequence[str] = (),
            flag: Callable[[str], str] = lambda name: f"--config.{name}") -> Sweep:
  """Checks a config and its sweep and loads their data; writes nothing.

  Args:
    config: the base config, command-line overrides applied.
    overrides: the sweep: one dict of dotted field -> value per run.
    config_file: where ``config`` came from (``path:variant``), for messages.
    cli_fields: the fields set on the command line, for messages and the rule that a
      field is not set both on the command line and by the sweep.
    flag: how messages name the override of a field (``--config.a.b`` on the command line).

  Raises:
    UsageError: naming the field, its value, what is accepted and where the value came
      from (the command line, the sweep and which run, or the config file).
  """
  cli_fields = set(cli_fields)
  overrides = [{k: v.item() if isinstance(v, np.generic) else v for k, v in o.items()}
               if isinstance(o, dict) else o for o in overrides]

  def source(name: str, run: int | None = None) -> str:
    if run is not None and name in overrides[run]:
      return f" (set by the sweep of {config_file}, run {run})"
    return f" (from {flag(name)})" if name in cli_fields else f" (from {config_file})"

  def checked(error: UsageError, run: int | None = None) -> UsageError:
    if error.field and " (from " not in str(error) and " (set by the sweep" not in str(error):
      return UsageError(f"{str(error).rstrip('.')}{source(error.field, run)}.",
                        field=error.field)
    return error

  try:
    experiment = experiment_lib.load(config.experiment)
    declared = {**trainer.FIELDS, **experiment.fields}
    undeclared = [f for f in experiment.traced_fields if f not in declared]
    if undeclared:
      raise UsageError(f"experiment {experiment.name!r} traces {undeclared[0]}, which it does "
                       f"not declare in its fields (declared: {', '.join(sorted(declared))}).")
    config = fields.complete(config, declared)
    trainer.validate(config, experiment, source)
  except UsageError as e:
    raise checked(e) from None
  swept = sweep_lib.swept_fields(overrides)
  both = [f for f in swept if f in cli_fields]
  if both:
    name = both[0]
    values = list(dict.fromkeys(repr(o[name]) for o in overrides if name in o))
    raise UsageError(f"{flag(name)} is also set by the sweep of {config_file} (to "
                     f"{', '.join(values)}), which would replace it; drop {flag(name)}, run "
                     "the base config alone (--no_sweep), or edit the sweep in the config "
                     "file.", field=name)
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
    reasons = {**trainer.unused_fields(run), **experiment.unused_fields(run)}
    unused = [f for f in o if f in reasons]
    if unused:
      raise UsageError(f"the sweep of {config_file} sets {unused[0]} (run {i}: "
                       f"{o[unused[0]]!r}), which this run's config does not use "
                       f"({reasons[unused[0]]}): its runs would repeat each other.",
                       field=unused[0])
    runs.append(run)
  runs = runs or [sweep_lib.apply_overrides(config, {})]
  datasets = {}
  for i, run in enumerate(runs):
    run_source = lambda name, i=i: source(name, i if overrides else None)
    key = data_key(run, experiment)
    try:
      if key not in datasets:
        datasets[key] = _load_data(experiment, run, i)
      trainer.check_data(run, datasets[key], run_source)
    except UsageError as e:
      raise checked(e, i if overrides else None) from None
  groups: dict[str, list[tuple[int, Config]]] = {}
  for run_id, run in enumerate(runs):
    groups.setdefault(trainer.group_key(run, experiment), []).append((run_id, run))
  sweep = Sweep(experiment, config, [dict(o) for o in overrides], runs, list(groups.values()),
                datasets, config_file)
  for i, group in enumerate(sweep.groups):
    _check_model(sweep, group)
    config = group[0][1]
    if config.train.runs_per_batch is None:  # chosen once, so the plan shows it
      chosen = devices.runs_per_batch(experiment, config, sweep.data(config), len(group))
      sweep.groups[i] = [(run_id, sweep_lib.apply_overrides(run, {
          "train.runs_per_batch": chosen})) for run_id, run in group]
      for run_id, run in sweep.groups[i]:
        sweep.runs[run_id] = run
  return sweep


def _load_data(experiment: experiment_lib.Experiment, run: Config,
               run_id: int) -> experiment_lib.Dataset:
  """``experiment.load_data(run)``; data too large for memory is a UsageError."""
  try:
    return experiment.load_data(run)
  except (MemoryError, OverflowError) as e:
    raise UsageError(f"loading the data of run {run_id} failed ({_one_line(e)}); check the "
                     "data.* fields (sizes).") from None
  except OSError as e:
    where = f"{e.filename}: " if e.filename else ""
    raise UsageError(f"loading the data of run {run_id} failed: {where}{e.strerror or e} "
                     f"(in the experiment's load_data: {_user_frame(e)}).") from None


def _user_frame(e: BaseException) -> str:
  """``file:line`` of the innermost frame of ``e``'s traceback outside installed packages
  and gradnoise itself (the user's or the experiment's code), or "unknown location"."""
  library = os.path.dirname(os.path.abspath(__file__))
  frames = [f for f in traceback.extract_tb(e.__traceback__)
            if "site-packages" not in f.filename and not f.filename.startswith(library)
            and not f.filename.startswith("<")]
  if not frames:
    return "unknown location"
  f = frames[-1]
  return f"{f.filename}:{f.lineno}" + (f" ({f.line.strip()})" if f.line else "")


def _hint(e: BaseException) -> str:
  text = f"{type(e).__name__} {e}"
  if "TracerBoolConversion" in text or "ConcretizationTypeError" in text:
    return ("a Python branch on a traced value: flax's nn.Dropout / nnx.Dropout with a "
            "per-run rate needs gradnoise.flax_experiment.Dropout / NnxDropout; a field "
            "that decides code or shapes must not be in traced_fields")
  if "Shapes must be 1D sequences of concrete values" in text:
    return "a traced field cannot decide a shape: take shapes from config, not hp"
  return "check the model.* and data.* fields and the experiment's code there"


def _check_model(sweep: Sweep, group: list[tuple[int, Config]]) -> None:
  """Traces one run's initialisation, training epoch and evaluation (shapes only, no
  computation) and checks that the state of a batch of runs fits in memory. A model that
  fails there (wrong output shape, a traced value in a Python branch, an overflowing size)
  is a UsageError naming the run and the line of code; set GRADNOISE_DEBUG=1 to see the
  traceback instead."""
  import jax
  run_id, config = group[0]
  data = sweep.data(config)
  spec = trainer.GroupSpec(sweep.experiment, trainer.group_config(config, sweep.experiment),
                           data.num_train, config.batch_size, bool(data.num_tasks))
  shape = lambda tree: jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), tree)
  train = shape(data.train)
  try:
    hp = trainer.run_hparams(config, sweep.experiment)
    epoch = np.int32(0)
    state = jax.eval_shape(lambda hp, train: trainer.init_run(spec, hp, train), hp, train)
    jax.eval_shape(lambda s, hp, t: trainer.train_epoch(spec, s, hp, t, epoch), state, hp,
                   train)
    evals = shape(trainer.eval_batches(data, config.train.eval_batch_size))
    jax.eval_shape(lambda s, hp, e: trainer.evaluate(spec, s, hp, e, epoch), state, hp, evals)
  except Exception as e:  # noqa: BLE001 - reported with where it happened
    if os.environ.get("GRADNOISE_DEBUG"):
      raise
    if isinstance(e, experiment_lib.TracedFieldError):
      raise UsageError(f"{e} (at {_user_frame(e)})") from None
    raise UsageError(f"run {run_id} of {sweep.config_file}: its model cannot be built or "
                     f"trained ({_one_line(e)[:400]}) at {_user_frame(e)}; {_hint(e)} (set "
                     "GRADNOISE_DEBUG=1 for the traceback).") from None
  per_run = sum(np.prod(x.shape, dtype=np.float64) * x.dtype.itemsize
                for x in jax.tree.leaves(state))
  at_once = -(-min(len(group), config.train.runs_per_batch or 1) // jax.device_count())
  available = devices.device_memory_bytes()
  if per_run * at_once > available:
    raise UsageError(f"run {run_id} of {sweep.config_file}: the parameters and optimizer "
                     f"state of {at_once} runs at once need {per_run * at_once / 2**30:.1f} "
                     f"GiB, more than the {available / 2**30:.1f} GiB of one device; make the "
                     "model smaller (model.* fields) or lower train.runs_per_batch.")


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
  percent = "accuracy" in metric or "error" in metric
  fmt = (lambda x: f"{x:.2%}") if percent else (lambda x: f"{x:.4g}")
  header = ["setting"] + [f"{arm}: {stat}" for arm in arms for stat in ("best", "mean", "runs")]
  rows = []
  for setting in analysis.settings:
    stats = {a.arm.label: a for a in analysis.arms if a.setting is setting}
    row = [setting.label]
    for arm in arms:
      a = stats.get(arm)
      row += [fmt(a.best), fmt(a.mean), str(a.runs)] if a else ["", "", ""]
    rows.append(row)
  lines = [f"{metric} over seeds (final):"]
  lines += ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header)] + rows]
  return "\n".join(lines)


def _barrier(name: str) -> None:
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def data_fingerprint(sweep: Sweep) -> str:
  """SHA-256 of every array the sweep trains and evaluates on (names, shapes, bytes)."""
  h = hashlib.sha256()
  for key in sorted(sweep.datasets):
    data = sweep.datasets[key]
    for split, arrays in [("train", data.train)] + sorted(data.evals.items()):
      for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{key}/{split}/{name}/{array.shape}/{array.dtype}".encode())
        h.update(memoryview(array).cast("B"))
  return h.hexdigest()


def train(sweep: Sweep, workdir: str, *, overwrite: bool = False,
          accept_env_change: bool = False, dry_run: bool = False,
          out: TextIO | None = None) -> dict[int, dict[str, Any]]:
  """Trains ``sweep`` into ``workdir``; returns run id -> final results.

  The work dir is checked first (a folder gradnoise did not write is used only if empty;
  a different sweep needs ``overwrite``; a resume under another environment or on other
  data needs ``accept_env_change``); nothing is written when it is refused, or with
  ``dry_run``. With the same sweep, finished runs are skipped and the others resume from
  their last checkpoint. The work dir is locked while it trains. Only process 0 writes
  results, metrics and TensorBoard files.
  """
  import jax
  out = out or sys.stdout
  primary = jax.process_index() == 0
  record = workdir_lib.sweep_record(
      sweep.config, sweep.overrides, sweep.config_file, data_fingerprint(sweep),
      experiment_lib.source_digest(sweep.config.experiment))
  wd = workdir_lib.WorkDir(workdir)
  resume = wd.check(record, overwrite, accept_env_change)
  if primary:
    print_plan(sweep, out)
  if dry_run:
    return {}
  _barrier("gradnoise:checked")
  if primary:
    wd.lock()
  try:
    if primary:
      resume = wd.check(record, overwrite, accept_env_change)  # as of holding the lock
      wd.start(record, resume)
    _barrier("gradnoise:started")
    results = wd.read_results() if resume else {}
    if resume and primary:
      print(f"resuming in {wd.path}: {len(results)} of {len(sweep.runs)} runs finished",
            file=out)
    _train_groups(sweep, wd, results, primary, out, workdir_lib.sweep_tag(record))
    if primary:
      print(summary_table(wd.path, sweep.experiment.summary_metric), file=out)
      print(f"results: {wd.file(workdir_lib.RESULTS_FILE)}", file=out)
  finally:
    if primary:
      wd.unlock()
  _barrier("gradnoise:done")
  return results


def _train_groups(sweep: Sweep, wd: workdir_lib.WorkDir, results: dict[int, dict[str, Any]],
                  primary: bool, out: TextIO, tag: str) -> None:
  """Trains the compile groups in order, writing metrics, TensorBoard and results."""
  swept = sweep_lib.swept_fields(sweep.overrides)
  finished = set(results)

  def on_batch_done(batch_results):
    results.update(batch_results)
    if primary:
      wd.write_results(swept, sweep.runs, results)

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

    def on_compiled(runs, seconds, i=i):
      if primary:
        print(f"group {i}: compiling the training epoch for {runs} runs at once took about "
              f"{seconds:.1f} s (first epoch minus second)", file=out)

    callbacks = trainer.GroupCallbacks(on_metrics, on_batch_done, on_restore,
                                       progress.advance, on_compiled)
    failing = True
    try:
      trainer.train_group(sweep.experiment, group, data, callbacks,
                          checkpoint_dir=wd.file(workdir_lib.CHECKPOINT_DIR),
                          finished=finished, checkpoint_tag=tag)
      failing = False
    finally:
      progress.close()
      tensorboard.close(failing)


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
  if not isinstance(sweep, bool) and not (isinstance(sweep, (list, tuple)) and all(
      isinstance(o, dict) for o in sweep)):
    raise UsageError(f"sweep={sweep!r}: accepted: True (the config file's), False (the base "
                     "config alone) or a list of dicts of dotted field names to values.")
  try:
    declared = {**trainer.FIELDS, **experiment_lib.load(base.experiment).fields}
    base = fields.complete(base, declared)
  except UsageError:
    pass  # prepare() reports the experiment itself
  base = sweep_lib.apply_overrides(base, overrides or {}, what="overrides")
  if sweep is True:
    sweep_list = get_sweep()
  else:
    sweep_list = list(sweep) if sweep else []
  prepared = prepare(base, sweep_list, config_file=config_file,
                     cli_fields=tuple(overrides or ()),
                     flag=lambda name: f"overrides[{name!r}]")
  results = train(prepared, workdir, overwrite=overwrite,
                  accept_env_change=accept_env_change, out=out)
  rows = []
  for run_id in sorted(results):
    row = {"run": run_id, **(prepared.overrides[run_id] if prepared.overrides else {})}
    rows.append({**row, **results[run_id]})
  return rows
