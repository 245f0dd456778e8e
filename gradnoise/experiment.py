"""The interface an experiment implements, and how the trainer finds an experiment module.

An experiment is a module that exposes ``EXPERIMENT``, an :class:`Experiment`. The config
field ``experiment`` names it (:func:`load`): a built-in short name (``mnist_mlp`` is
``experiments.mnist_mlp``), any importable dotted module path (``mylab.noise.cifar``) or a
Python file (``path/to/my_experiment.py``, relative to the current directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import ml_collections
import numpy as np

from gradnoise.errors import UsageError
from gradnoise.fields import Field

Config = ml_collections.ConfigDict
Batch = dict[str, jax.Array]
HParams = dict[str, jax.Array]
Params = Any
Extra = dict[str, Any]
Metrics = dict[str, jax.Array]
STATE_KEY = "state"  # loss_fn aux entry holding new values of the run's extra state


class InitFn(Protocol):
  def __call__(self, key: jax.Array, batch: Batch, hp: HParams, config: Config) -> Params:
    ...


class LossFn(Protocol):
  def __call__(self, params: Params, batch: Batch, key: jax.Array, hp: HParams,
               config: Config) -> tuple[jax.Array, Metrics]:
    ...


class EvalFn(Protocol):
  def __call__(self, params: Params, batch: Batch, hp: HParams, config: Config) -> Metrics:
    ...


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
class RunStateHooks:
  """Per-run state outside the gradient: a curriculum length, a linear-start switch,
  BatchNorm statistics. The state (``extra``, a dict of arrays) is merged into ``hp`` for
  every function below and for ``loss_fn`` / ``eval_fn``, checkpointed with the run, and
  its scalars are logged as ``state_<name>``. It stops changing when the run diverges.

  Attributes:
    init: ``(key, batch, hp, config) -> extra``, the initial state (same key and sample
      batch as ``init_params``).
    after_step: optional ``(extra, aux, hp, config) -> extra``, after every training step
      with the step's ``loss_fn`` aux (whose ``aux["state"]``, if any, is already merged).
    after_eval: optional ``(extra, metrics, hp, config) -> extra``, after every evaluation
      with its metrics (``<split>_<metric>``), e.g. to act on a validation plateau.
  """

  init: Callable[[jax.Array, Batch, HParams, Config], Extra]
  after_step: Callable[[Extra, Metrics, HParams, Config], Extra] | None = None
  after_eval: Callable[[Extra, Metrics, HParams, Config], Extra] | None = None


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What the shared trainer needs from an experiment.

  Every function that runs inside the compiled program (``init_params``, ``loss_fn``,
  ``eval_fn`` and the state hooks) takes its arguments in one order, ``(params or state,
  batch, key, hp, config)`` with the ones it does not need left out, and gets the compile
  group's config as a :class:`GroupConfig`: reading a traced field from it raises
  :class:`TracedFieldError` (its value differs between the runs of the group; read it from
  ``hp``), and ``config.code_choices`` gives the choices declared by ``code_choices``.

  Attributes:
    name: a short name for messages.
    traced_fields: config fields (dotted) that only change numbers, not shapes or code:
      runs that differ only in these (and the trainer's own traced fields: seed, learning
      rate, noise, clipping) share one compiled program. ``hparams`` puts them in ``hp``.
    fields: dotted name -> :class:`gradnoise.fields.Field` for every config field the
      experiment adds to the trainer's (``trainer.FIELDS``); each run's config is checked
      against them before anything is written.
    load_data: ``config -> Dataset``; raises UsageError naming the file for bad data.
    hparams: ``config -> {name: number or array}``, the per-run traced values (all runs of
      a group give the same shapes). ``hp`` also holds the trainer's ``seed``,
      ``learning_rate``, ``eta``, ``gamma``, ``std``, ``clip_norm`` and ``epoch`` (the
      0-based epoch being trained; in ``eval_fn`` the last epoch trained).
    init_params: ``(key, batch, hp, config) -> params``; ``batch`` is a sample training
      batch of the run (``batch_size`` examples), for shape inference or data-dependent
      initialisation.
    loss_fn: ``(params, batch, key, hp, config) -> (loss, aux)``: the training loss and
      scalar metrics (the key drives dropout and other training randomness); ``aux["state"]``
      (optional) holds new values for entries of the run's extra state.
    eval_fn: ``(params, batch, hp, config) -> {metric: per-example values [B]}``; the
      trainer averages them over each eval split and names them ``<split>_<metric>``.
    validate: ``config -> None``; rules between fields (raises UsageError naming a field).
    unused_fields: ``config -> {field: reason}``, the experiment's fields that ``config``
      does not use (e.g. an init's parameters under another init): a sweep over one of
      them is refused, since its runs would repeat each other.
    code_choices: ``config -> {name: JSON-able value}``, what a traced field implies about
      the code, declared once (e.g. ``{"dropout": rate > 0}``): runs with different choices
      compile separately, and the functions above read them as ``config.code_choices``.
    summary_metric: the results.csv column of the end-of-sweep summary table and the
      default metric of ``python -m gradnoise.report``.
    curves: the metrics.jsonl metrics that ``python -m gradnoise.report`` plots over steps
      by default (those logged).
    state: optional :class:`RunStateHooks` for per-run state outside the gradient.
    batch_order: optional ``(hp, epoch, num_train, steps, batch_size) -> indices [steps,
      batch_size]``, the training examples of each step of an epoch (traced ``hp`` and
      ``epoch``); None: a random permutation per epoch from the seed's data stream
      (``trainer.batch_order``). Experiments whose data must be seen in a fixed order
      (GRU4Rec's session-parallel batches, laid out by ``load_data``) set it.
  """

  name: str
  traced_fields: tuple[str, ...]
  fields: Mapping[str, Field]
  load_data: Callable[[Config], Dataset]
  hparams: Callable[[Config], dict[str, Any]]
  init_params: InitFn
  loss_fn: LossFn
  eval_fn: EvalFn
  validate: Callable[[Config], None] = lambda config: None
  unused_fields: Callable[[Config], dict[str, str]] = lambda config: {}
  code_choices: Callable[[Config], dict[str, Any]] = lambda config: {}
  summary_metric: str = "test_accuracy"
  curves: tuple[str, ...] = ("train_loss",)
  state: RunStateHooks | None = None
  batch_order: Callable[[HParams, jax.Array, int, int, int], jax.Array] | None = None


class TracedFieldError(AttributeError):
  """A function inside the compiled program read a traced config field from the config."""


class GroupConfig:
  """A compile group's config as the functions inside its program see it.

  Fields are read as from a ConfigDict (``config.model.width``, ``config["model"]``); a
  traced field raises :class:`TracedFieldError`, because the program serves every run of
  the group and the field's value differs between them (read ``hp`` instead).
  ``code_choices`` holds the group's ``Experiment.code_choices``.
  """

  def __init__(self, config: Config, traced: Sequence[str], code_choices: dict[str, Any],
               prefix: str = ""):
    self._config, self._traced, self._prefix = config, frozenset(traced), prefix
    self.code_choices = dict(code_choices)

  def _get(self, name: str) -> Any:
    dotted = self._prefix + name
    if dotted in self._traced:
      raise TracedFieldError(
          f"config field {dotted} is traced (it may differ between the runs of one compiled "
          f"program, so the config holds only one run's value); read it from hp, which "
          f"the experiment's hparams(config) fills, or declare what it implies for the code "
          f"in Experiment.code_choices and read config.code_choices.")
    value = self._config[name]
    if isinstance(value, ml_collections.ConfigDict):
      return GroupConfig(value, self._traced, self.code_choices, dotted + ".")
    return value

  def __getattr__(self, name: str) -> Any:
    if name.startswith("_"):
      raise AttributeError(name)
    try:
      return self._get(name)
    except KeyError:
      raise AttributeError(f"config has no field {self._prefix + name!r}") from None

  def __getitem__(self, name: str) -> Any:
    return self._get(name)

  def __contains__(self, name: str) -> bool:
    return name in self._config

  def get(self, name: str, default: Any = None) -> Any:
    return self._get(name) if name in self._config else default

  def keys(self):
    return self._config.keys()


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
  module = _module(name)
  experiment = getattr(module, "EXPERIMENT", None)
  if not isinstance(experiment, Experiment):
    where = getattr(module, "__file__", None) or module.__name__
    raise UsageError(f"config field experiment={name!r}: {where} has no EXPERIMENT of type "
                     "gradnoise.experiment.Experiment; define one, e.g. EXPERIMENT = "
                     "gradnoise.flax_experiment.supervised(...).", field="experiment")
  return experiment


def _module(name: str):
  """The module the config field ``experiment`` names (imported once)."""
  if name.endswith(".py"):
    return _import_file(name)
  dotted = name if "." in name else f"{BUILTIN_PACKAGE}.{name}"
  try:
    return importlib.import_module(dotted)
  except ModuleNotFoundError as e:
    if not (dotted == e.name or dotted.startswith(f"{e.name}.")):
      raise  # the module exists but one of its own imports is missing
    raise UsageError(f"config field experiment={name!r}: no module {dotted!r} (on sys.path "
                     f"from {os.getcwd()}); accepted: a built-in experiment "
                     f"({', '.join(builtin_names())}), a dotted module path importable "
                     "here (add its folder to PYTHONPATH) or a .py file.",
                     field="experiment") from None


def source_digest(name: str) -> str:
  """SHA-256 of the source file of the experiment module ``name`` ("" if it has none): a
  run resumed under edited model code would not continue the run it resumes."""
  path = getattr(_module(name), "__file__", None)
  if not path or not os.path.isfile(path):
    return ""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


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
