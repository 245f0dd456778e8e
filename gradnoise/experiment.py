"""The interface an experiment implements, and how the trainer finds an experiment module.

An experiment is a module that exposes ``EXPERIMENT``, an :class:`Experiment`. The config
field ``experiment`` names it (:func:`load`): a built-in short name (``mnist_mlp`` is
``experiments.mnist_mlp``), any importable dotted module path (``mylab.noise.cifar``) or a
Python file (``path/to/my_experiment.py``, relative to the current directory).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import sys
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from gradnoise.errors import UsageError
from gradnoise.fields import Field

Config = ml_collections.ConfigDict
Batch = dict[str, jax.Array]
HParams = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Arrays kept on the device for a whole compile group.

  Attributes:
    train: arrays with a leading example axis; batches are taken by index.
    evals: split name -> arrays with a leading example axis (e.g. ``{"test": {...}}``).
    description: one line for the run plan (source, sizes).
    num_tasks: 0, or the size of a leading task axis of every array ([tasks, N, ...]):
      several data sets of equal sizes, of which each run trains and evaluates on the one
      its traced hparam ``task`` selects.
  """

  train: dict[str, np.ndarray]
  evals: dict[str, dict[str, np.ndarray]]
  description: str
  num_tasks: int = 0

  @property
  def num_train(self) -> int:
    return next(iter(self.train.values())).shape[1 if self.num_tasks else 0]


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What the shared trainer needs from an experiment.

  Attributes:
    name: the config's ``experiment`` value.
    traced_fields: config fields (dotted) that only change numbers, not shapes or code:
      runs that differ only in these (and the trainer's own traced fields: seed, learning
      rate, noise, clipping) share one compiled program.
    fields: dotted name -> :class:`gradnoise.fields.Field` for every config field the
      experiment adds to the trainer's (``trainer.FIELDS``); each run's config is checked
      against them before anything is written.
    validate: ``config -> None``; checks rules between fields (raises UsageError naming a
      field); the per-field checks come from ``fields``.
    load_data: ``config -> Dataset``.
    hparams: ``config -> {name: number or array}``, the per-run traced values this
      experiment reads in ``init_params`` / ``loss_fn`` (all runs of a group give the same
      shapes).
    init_params: ``(key, config, hp) -> params``.
    loss_fn: ``(params, batch, key, hp, config) -> (loss, {metric: value})`` for training
      (the key drives dropout and other training randomness). ``hp["epoch"]`` is the
      0-based epoch being trained (int32), in ``eval_fn`` the last epoch trained.
    eval_fn: ``(params, batch, hp, config) -> {metric: per-example values [B]}``; the
      trainer averages them over each eval split and names them ``<split>_<metric>``.
    code_key: ``config -> JSON-able value`` for choices a traced field implies about the
      code (e.g. dropout on or off); runs with different values compile separately.
    summary_metric: the results.csv column of the end-of-sweep summary table.
    init_extra: optional ``(hp, config) -> {name: array}``, per-run state outside the
      gradient (e.g. a curriculum length); it is merged into ``hp`` for ``loss_fn`` and
      ``eval_fn``, checkpointed with the run, and logged as ``state_<name>``.
    update_extra: ``(extra, aux, hp, config) -> extra``, called after every step with the
      step's ``loss_fn`` aux metrics.
    after_eval: ``(extra, metrics, hp, config) -> extra``, called after every evaluation
      with its metrics (``<split>_<metric>``), e.g. to act on a validation plateau.
  """

  name: str
  traced_fields: tuple[str, ...]
  fields: Mapping[str, Field]
  load_data: Callable[[Config], Dataset]
  hparams: Callable[[Config], dict[str, Any]]
  init_params: Callable[..., Any]
  loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  eval_fn: Callable[..., dict[str, jax.Array]]
  validate: Callable[[Config], None] = lambda config: None
  code_key: Callable[[Config], Any] = lambda config: None
  summary_metric: str = "test_accuracy"
  init_extra: Callable[..., dict[str, Any]] | None = None
  update_extra: Callable[..., dict[str, Any]] | None = None
  after_eval: Callable[..., dict[str, Any]] | None = None


BUILTIN_PACKAGE = "experiments"


def load(name: str) -> Experiment:
  """The ``EXPERIMENT`` of the module that the config field ``experiment`` names.

  Raises UsageError when the module cannot be found or exposes no Experiment; an error
  raised while importing a module that does exist propagates.
  """
  if not isinstance(name, str) or not name:
    raise UsageError(f"config field experiment={name!r} is invalid; accepted: a built-in "
                     f"experiment ({', '.join(builtin_names())}), a dotted module path or a "
                     ".py file.", field="experiment")
  if name.endswith(".py"):
    module = _import_file(name)
  else:
    dotted = name if "." in name else f"{BUILTIN_PACKAGE}.{name}"
    try:
      module = importlib.import_module(dotted)
    except ModuleNotFoundError as e:
      if not (dotted == e.name or dotted.startswith(f"{e.name}.")):
        raise  # the module exists but one of its own imports is missing
      raise UsageError(f"config field experiment={name!r}: no module {dotted!r} (on sys.path "
                       f"from {os.getcwd()}); accepted: a built-in experiment "
                       f"({', '.join(builtin_names())}), a dotted module path importable "
                       "here (add its folder to PYTHONPATH) or a .py file.",
                       field="experiment") from None
  experiment = getattr(module, "EXPERIMENT", None)
  if not isinstance(experiment, Experiment):
    raise UsageError(f"config field experiment={name!r}: module {module.__name__} "
                     f"({getattr(module, '__file__', '?')}) has no EXPERIMENT of type "
                     "gradnoise.experiment.Experiment.", field="experiment")
  return experiment


def _import_file(path: str):
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(full):
    raise UsageError(f"config field experiment={path!r}: file {full} not found (relative "
                     f"paths are taken from the current directory {os.getcwd()}).",
                     field="experiment")
  module_name = f"_gradnoise_experiment_{abs(hash(full))}"
  if module_name not in sys.modules:
    spec = importlib.util.spec_from_file_location(module_name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[module_name]
      raise
  return sys.modules[module_name]


def builtin_names() -> list[str]:
  """The experiment modules of the built-in package (those that define EXPERIMENT)."""
  try:
    package = importlib.import_module(BUILTIN_PACKAGE)
  except ModuleNotFoundError:
    return []
  names = []
  for info in pkgutil.iter_modules(package.__path__):
    spec = importlib.util.find_spec(f"{BUILTIN_PACKAGE}.{info.name}")
    try:
      with open(spec.origin) as f:
        if "\nEXPERIMENT = " in f.read():
          names.append(info.name)
    except (OSError, TypeError):
      continue
  return sorted(names)
