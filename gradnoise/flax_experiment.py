"""Flax models (linen or NNX) as gradnoise experiments: supervised classification or regression.

:func:`supervised` turns a model factory plus data into an :class:`Experiment`::

    from gradnoise import fields, flax_experiment as fe

    EXPERIMENT = fe.supervised(
        "my_cnn", lambda hp, config: CNN(dropout_rate=hp["dropout_rate"]),
        data=lambda config: fe.ArrayData(x_train, y_train, {"test": (x_test, y_test)}, "..."),
        fields={"model.dropout_rate": fields.number(0, 1, high_open=True)},
        traced_fields=("model.dropout_rate",),
        hparams=lambda config: {"dropout_rate": config.model.dropout_rate})

How a model is run:

- The factory is called inside the compiled program with ``hp`` (the run's traced values,
  arrays of the shapes ``hparams`` gives, plus the trainer's ``seed``, ``learning_rate``,
  ...) and the group's :class:`~gradnoise.experiment.GroupConfig`. Runs that differ only in
  traced fields share one program, so build the module from ``hp`` for those fields and
  from ``config`` (including ``config.code_choices``) for everything that changes shapes or
  code. flax's own dropout layers test ``rate == 0`` in Python, which fails on a traced
  rate: use :class:`Dropout` (linen) or :class:`NnxDropout`.
- linen: ``factory(hp, config) -> nn.Module``, called as ``module(x, train=bool)``;
  initialised with ``train=False`` on the sample batch the trainer passes to
  ``init_params``. Training draws the rng streams ``rng_streams`` (default ``dropout``)
  from the trainer's dropout key.
- NNX: ``factory(hp, config, rngs) -> nnx.Module``, called as ``module(x)`` after
  ``module.train()`` / ``module.eval()`` (which set ``deterministic`` and
  ``use_running_average``). The module is rebuilt inside every traced function (its graph
  definition is static; the random initialisation outside ``init_params`` is dead code
  that XLA removes) and its ``nnx.Param`` values are replaced by the run's parameters, a
  plain dict (``nnx.to_pure_dict``) that the trainer differentiates and optax updates.
  ``rngs`` is ``nnx.Rngs(key)``: the init key in ``init_params``, the trainer's dropout
  key in training.
- Mutable collections named in ``mutable`` (linen collections; for NNX the Variable types
  of those names, ``batch_stats`` is ``nnx.BatchStat``) are per-run state: created by the
  model's init, updated by every training step (the model runs in training mode with them
  mutable), used in evaluation (``train=False`` / ``module.eval()``), checkpointed with the
  run. The trainer keeps that state as a flat dict of arrays, one entry per leaf named
  ``<collection>/<path>`` (e.g. ``batch_stats/BatchNorm_0/mean``).

Tasks: ``classification`` (logits [B, C], integer labels [B]; softmax cross-entropy;
training metric ``accuracy``, eval metrics ``accuracy`` and ``loss``) and ``regression``
(outputs of the targets' size per example; mean squared error over each example's
entries; metric ``loss``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gradnoise import experiment
from gradnoise.errors import UsageError
from gradnoise.fields import Field

Config = experiment.Config
TASKS = ("classification", "regression")


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
  """Inverted dropout: zeroes each entry of ``x`` with probability ``rate`` (a number or a
  traced scalar in [0, 1); rate 1 gives NaN gradients) and scales the rest by
  1 / (1 - rate)."""
  keep = 1.0 - jnp.asarray(rate, x.dtype)
  return jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, jnp.zeros_like(x))


class Dropout(nn.Module):
  """linen dropout whose ``rate`` may be a traced array (``nn.Dropout`` needs a Python
  number). ``__call__(x, deterministic)``: identity when ``deterministic``, else
  :func:`dropout` with a key from the ``rng_collection`` stream."""

  rate: Any
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    return x if deterministic else dropout(x, self.rate, self.make_rng(self.rng_collection))


class NnxDropout(nnx.Module):
  """NNX dropout whose ``rate`` may be a traced array (``nnx.Dropout`` needs a Python
  number). Off when ``deterministic`` (set by ``module.eval()``, cleared by
  ``module.train()``); keys come from ``rngs[rng_collection]``."""

  def __init__(self, rate: Any, *, rngs: nnx.Rngs, deterministic: bool = False,
               rng_collection: str = "dropout"):
    self.rate = rate
    self.deterministic = deterministic
    self.rngs = rngs[rng_collection].fork()

  def __call__(self, x: jax.Array) -> jax.Array:
    return x if self.deterministic else dropout(x, self.rate, self.rngs())


@dataclasses.dataclass(frozen=True)
class ArrayData:
  """A data set as numpy arrays with a leading example axis.

  Attributes:
    x_train, y_train: inputs [N, ...] and targets: integer labels [N] (classification,
      stored as int32) or values [N, ...] (regression, stored as float32). Inputs are kept
      as given (cast them to float32 unless the model wants e.g. token ids).
    evals: split name -> (x, y), e.g. ``{"test": (x_test, y_test)}``; metrics are
      reported as ``<split>_<metric>``.
    description: one line for the run plan (source, sizes).
  """

  x_train: np.ndarray
  y_train: np.ndarray
  evals: Mapping[str, tuple[np.ndarray, np.ndarray]]
  description: str

  def __post_init__(self):
    for split, (x, y) in {"train": (self.x_train, self.y_train), **self.evals}.items():
      if len(x) != len(y):
        raise UsageError(f"data for {self.description}: split {split} has {len(x)} inputs "
                         f"but {len(y)} targets.")


@dataclasses.dataclass(frozen=True)
class TfdsData:
  """A TFDS data set read with ``tfds.data_source`` (random access, no TensorFlow needed
  for prepared data) into arrays when the experiment's data is loaded.

  Attributes:
    name: the TFDS name, e.g. ``mnist``.
    train_split: the training split (TFDS split syntax, e.g. ``train[:10%]``).
    eval_splits: report name -> TFDS split.
    x_key, y_key: the features holding inputs and targets; uint8 inputs (images) become
      float32 in [0, 1].
    data_dir: TFDS data directory (None: TFDS's default).
  """

  name: str
  train_split: str = "train"
  eval_splits: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"test": "test"})
  x_key: str = "image"
  y_key: str = "label"
  data_dir: str | None = None

  def load(self) -> ArrayData:
    """Reads every split; raises UsageError naming the data set when TFDS fails."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    splits = [self.train_split, *self.eval_splits.values()]
    try:
      sources = tfds.data_source(self.name, split=splits, data_dir=self.data_dir)
      arrays = [self._arrays(source) for source in sources]
    except Exception as e:  # noqa: BLE001 - tfds fails in many ways (name, files, network)
      raise UsageError(f"tfds.data_source({self.name!r}, split={splits}, data_dir="
                       f"{self.data_dir!r}) failed with {type(e).__name__}: "
                       f"{' '.join(str(e).split())}") from e
    sizes = ", ".join(f"{split} {len(y)}" for split, (_, y) in zip(splits, arrays))
    return ArrayData(*arrays[0], dict(zip(self.eval_splits, arrays[1:])),
                     f"tfds {self.name} ({sizes})")

  def _arrays(self, source) -> tuple[np.ndarray, np.ndarray]:
    examples = list(source)
    x = np.stack([np.asarray(e[self.x_key]) for e in examples])
    if x.dtype == np.uint8:
      x = x.astype(np.float32) / np.float32(255)
    return x, np.stack([np.asarray(e[self.y_key]) for e in examples])


DataSpec = ArrayData | TfdsData


class _Linen:
  """Runs a linen module factory: ``init`` and ``apply`` on plain dicts of variables."""

  def __init__(self, factory: Callable, mutable: Sequence[str], rng_streams: Sequence[str]):
    self.factory, self.mutable, self.rng_streams = factory, tuple(mutable), tuple(rng_streams)

  def init(self, key: jax.Array, x: jax.Array, hp: experiment.HParams,
           config: experiment.GroupConfig) -> tuple[Any, dict[str, Any]]:
    variables = self._module(hp, config).init({"params": key}, x, train=False)
    return variables.get("params", {}), {c: variables[c] for c in self.mutable
                                         if c in variables}

  def apply(self, params: Any, collections: dict[str, Any], x: jax.Array,
            hp: experiment.HParams, config: experiment.GroupConfig,
            key: jax.Array | None) -> tuple[jax.Array, dict[str, Any]]:
    module = self._module(hp, config)
    variables = {"params": params, **collections}
    if key is None:
      return module.apply(variables, x, train=False), collections
    rngs = {name: jax.random.fold_in(key, i) for i, name in enumerate(self.rng_streams)}
    out, new = module.apply(variables, x, train=True, rngs=rngs, mutable=list(collections))
    return out, dict(new)

  def _module(self, hp: experiment.HParams, config: experiment.GroupConfig) -> nn.Module:
    module = self.factory(hp, config)
    if not isinstance(module, nn.Module):
      raise TypeError(f"the model factory (hp, config) returned {type(module).__name__}, "
                      "not a flax.linen.Module")
    return module


class _Nnx:
  """Runs an NNX module factory functionally: parameters and collections as pure dicts."""

  def __init__(self, factory: Callable, mutable: Sequence[str]):
    self.factory = factory
    self.mutable = {name: nnx.variable_type_from_name(name) for name in mutable}

  def init(self, key: jax.Array, x: jax.Array, hp: experiment.HParams,
           config: experiment.GroupConfig) -> tuple[Any, dict[str, Any]]:
    del x  # NNX modules are built with their shapes
    module = self._module(key, hp, config)
    return nnx.to_pure_dict(nnx.state(module, nnx.Param)), self._collections(module)

  def apply(self, params: Any, collections: dict[str, Any], x: jax.Array,
            hp: experiment.HParams, config: experiment.GroupConfig,
            key: jax.Array | None) -> tuple[jax.Array, dict[str, Any]]:
    module = self._module(jax.random.key(0) if key is None else key, hp, config)
    for kind, values in [(nnx.Param, params)] + [(self.mutable[name], value)
                                                 for name, value in collections.items()]:
      state = nnx.state(module, kind)
      nnx.replace_by_pure_dict(state, values)
      nnx.update(module, state)
    if key is None:
      module.eval()
      return module(x), collections
    module.train()
    return module(x), self._collections(module)

  def _module(self, key: jax.Array, hp: experiment.HParams,
              config: experiment.GroupConfig) -> nnx.Module:
    module = self.factory(hp, config, nnx.Rngs(key))
    if not isinstance(module, nnx.Module):
      raise TypeError(f"the model factory (hp, config, rngs) returned "
                      f"{type(module).__name__}, not a flax.nnx.Module")
    return module

  def _collections(self, module: nnx.Module) -> dict[str, Any]:
    out = {name: nnx.to_pure_dict(nnx.state(module, kind)) for name, kind in self.mutable.items()}
    return {name: values for name, values in out.items() if values}


def _flatten(collections: Mapping[str, Any]) -> dict[str, jax.Array]:
  """``{"batch_stats": {"bn": {"mean": a}}}`` -> ``{"batch_stats/bn/mean": a}``."""
  leaves = jax.tree_util.tree_flatten_with_path(dict(collections))[0]
  return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


def _unflatten(hp: experiment.HParams, names: Sequence[str]) -> dict[str, Any]:
  """The collections ``names`` from the flat entries of ``hp`` (inverse of _flatten; NNX
  list indices come back as strings, which ``nnx.replace_by_pure_dict`` accepts)."""
  out: dict[str, Any] = {}
  for key, value in hp.items():
    head, *path = key.split("/")
    if head in names and path:
      node = out.setdefault(head, {})
      for part in path[:-1]:
        node = node.setdefault(part, {})
      node[path[-1]] = value
  return out


def _classification(out: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  if out.ndim != 2 or out.shape[0] != y.shape[0]:
    raise ValueError(f"the model's output has shape {out.shape} for labels of shape {y.shape}; "
                     "classification needs logits [batch, classes]")
  return {"accuracy": (jnp.argmax(out, -1) == y).astype(jnp.float32),
          "loss": optax.softmax_cross_entropy_with_integer_labels(out, y)}


def _regression(out: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  if out.size != y.size:
    raise ValueError(f"the model's output has shape {out.shape} for targets of shape "
                     f"{y.shape}; regression needs one output per target value")
  error = (out.reshape(y.shape) - y).reshape(y.shape[0], -1)
  return {"loss": jnp.mean(error**2, axis=1)}


def supervised(
    name: str,
    model: Callable[..., Any],
    data: DataSpec | Callable[[Config], DataSpec],
    *,
    task: str = "classification",
    fields: Mapping[str, Field] | None = None,
    traced_fields: Sequence[str] = (),
    hparams: Callable[[Config], dict[str, Any]] = lambda config: {},
    code_choices: Callable[[Config], dict[str, Any]] = lambda config: {},
    validate: Callable[[Config], None] | None = None,
    mutable: Sequence[str] = ("batch_stats",),
    rng_streams: Sequence[str] = ("dropout",),
    summary_metric: str | None = None,
) -> experiment.Experiment:
  """An Experiment that trains a flax model on ``data`` (see the module docstring).

  Args:
    name: a short name for messages.
    model: ``(hp, config) -> flax.linen.Module`` or ``(hp, config, rngs) -> nnx.Module``
      (told apart by the number of parameters).
    data: an :class:`ArrayData` or :class:`TfdsData`, or ``config -> either`` (called when
      the trainer loads the data, once per distinct data config).
    task: ``classification`` or ``regression``.
    fields: every config field the experiment adds to the trainer's (``trainer.FIELDS``).
    traced_fields: those of ``fields`` that only change numbers (vmapped per run).
    hparams: ``config -> {name: number or array}``: the traced values the model reads
      from ``hp``.
    code_choices, validate: as in :class:`~gradnoise.experiment.Experiment`.
    mutable: collections carried as per-run state (BatchNorm's ``batch_stats``).
    rng_streams: linen rng streams drawn in training, each from the dropout key (NNX
      modules draw every stream from ``nnx.Rngs(key)``).
    summary_metric: the summary table's column; default ``test_accuracy`` for
      classification, ``test_loss`` for regression.

  Raises:
    ValueError: an unknown task, or a factory taking neither 2 nor 3 parameters.
  """
  if task not in TASKS:
    raise ValueError(f"task={task!r}; accepted: {', '.join(TASKS)}")
  arity = len([p for p in inspect.signature(model).parameters.values()
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.default is p.empty])
  if arity not in (2, 3):
    raise ValueError(f"model takes {arity} required positional parameters; accepted: (hp, "
                     "config) for a linen module, (hp, config, rngs) for an NNX module")
  runner = _Linen(model, mutable, rng_streams) if arity == 2 else _Nnx(model, mutable)
  metrics_of = _classification if task == "classification" else _regression
  y_dtype = np.int32 if task == "classification" else np.float32
  state_prefixes = tuple(f"{c}/" for c in mutable)

  def model_hp(hp: experiment.HParams) -> experiment.HParams:
    return {k: v for k, v in hp.items() if not k.startswith(state_prefixes)}

  def load_data(config: Config) -> experiment.Dataset:
    spec = data(config) if callable(data) else data
    if isinstance(spec, TfdsData):
      spec = spec.load()
    if not isinstance(spec, ArrayData):
      raise UsageError(f"experiment {name!r}: its data gave {type(spec).__name__}; accepted: "
                       "gradnoise.flax_experiment.ArrayData or TfdsData (or a function of the "
                       "config returning one).")

    def targets(y: Any, split: str) -> np.ndarray:
      y = np.asarray(y)
      if task == "classification":
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (
            np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
          raise UsageError(f"experiment {name!r}: the {split} labels are {y.dtype} of shape "
                           f"{y.shape}; classification needs integer class ids of shape [N] "
                           "(not one-hot, not strings).")
        if y.size and y.min() < 0:
          raise UsageError(f"experiment {name!r}: the {split} labels include {y.min()}; "
                           "class ids start at 0.")
      elif not np.issubdtype(y.dtype, np.number):
        raise UsageError(f"experiment {name!r}: the {split} targets are {y.dtype}; "
                         "regression needs numbers.")
      return y.astype(y_dtype)

    pair = lambda x, y, split="train": {"x": np.asarray(x), "y": targets(y, split)}
    return experiment.Dataset(
        train=pair(spec.x_train, spec.y_train),
        evals={split: pair(x, y, split) for split, (x, y) in spec.evals.items()},
        description=spec.description)

  def init_params(key, batch, hp, config):
    return runner.init(key, batch["x"], model_hp(hp), config)[0]

  def init_state(key, batch, hp, config):
    return _flatten(runner.init(key, batch["x"], model_hp(hp), config)[1])

  def loss_fn(params, batch, key, hp, config):
    out, new = runner.apply(params, _unflatten(hp, mutable), batch["x"], model_hp(hp),
                            config, key)
    metrics = metrics_of(out, batch["y"])
    aux = {k: jnp.mean(v) for k, v in metrics.items() if k != "loss"}
    if new:
      aux[experiment.STATE_KEY] = _flatten(new)
    return jnp.mean(metrics["loss"]), aux

  def eval_fn(params, batch, hp, config):
    out, _ = runner.apply(params, _unflatten(hp, mutable), batch["x"], model_hp(hp), config,
                          None)
    return metrics_of(out, batch["y"])

  return experiment.Experiment(
      name=name,
      traced_fields=tuple(traced_fields),
      fields=dict(fields or {}),
      load_data=load_data,
      hparams=hparams,
      init_params=init_params,
      loss_fn=loss_fn,
      eval_fn=eval_fn,
      validate=validate or (lambda config: None),
      code_choices=code_choices,
      summary_metric=summary_metric or ("test_accuracy" if task == "classification"
                                        else "test_loss"),
      state=experiment.RunStateHooks(init=init_state) if mutable else None,
  )
