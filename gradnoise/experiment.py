"""The interface an experiment implements, and the registry the trainer finds it in.

An experiment module (``experiments/<name>.py``) builds one :class:`Experiment` and calls
:func:`register`. ``gradnoise`` knows no experiment by name: :func:`get` imports
``experiments.<name>`` on demand.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from gradnoise.errors import UsageError

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
    validate: ``config -> None``; raises UsageError naming a bad field.
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
  validate: Callable[[Config], None]
  load_data: Callable[[Config], Dataset]
  hparams: Callable[[Config], dict[str, Any]]
  init_params: Callable[..., Any]
  loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  eval_fn: Callable[..., dict[str, jax.Array]]
  code_key: Callable[[Config], Any] = lambda config: None
  summary_metric: str = "test_accuracy"
  init_extra: Callable[..., dict[str, Any]] | None = None
  update_extra: Callable[..., dict[str, Any]] | None = None
  after_eval: Callable[..., dict[str, Any]] | None = None


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
  """Makes ``experiment`` available to :func:`get` under its name."""
  _REGISTRY[experiment.name] = experiment
  return experiment


def get(name: str) -> Experiment:
  """The experiment registered as ``name``, importing ``experiments.<name>`` if needed."""
  if name not in _REGISTRY:
    try:
      importlib.import_module(f"experiments.{name}")
    except ModuleNotFoundError as e:
      if e.name not in (f"experiments.{name}", "experiments"):
        raise
  if name not in _REGISTRY:
    known = sorted(set(_REGISTRY) | set(_available()))
    raise UsageError(f"config field experiment={name!r} is not a known experiment; "
                     f"known: {', '.join(known) or 'none'}.")
  return _REGISTRY[name]


def _available() -> list[str]:
  try:
    package = importlib.import_module("experiments")
  except ModuleNotFoundError:
    return []
  return list(getattr(package, "EXPERIMENTS", ()))
