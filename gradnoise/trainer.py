"""The shared trainer: a compile group of runs as one ``jit(vmap(scan(step)))`` per epoch.

Runs that differ only in traced fields (seed, learning rate, noise, clipping and the
experiment's own ``traced_fields``) share one compiled program; everything else (shapes,
code) makes a separate compile group. Data stays on the device; each epoch is one call
that scans over its steps and takes batches by index. Randomness follows common random
numbers: each run derives separate key streams for init, data order, noise and dropout
from ``key(seed)``, so runs that differ only in eta share initial weights and batch order.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import time
from typing import Any, Callable, Collection, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gradnoise
from gradnoise import fields
from gradnoise._family import add_where, split_leaves, unit_noise_at
from gradnoise.checkpoint import BatchCheckpoints
from gradnoise.errors import UsageError
from gradnoise.experiment import STATE_KEY, Dataset, Experiment, GroupConfig
from gradnoise.noise import _working_dtype

# Key streams, folded into key(seed) (README, "Architecture": common random numbers).
STREAM_INIT, STREAM_DATA, STREAM_NOISE, STREAM_DROPOUT = 0, 1, 2, 3
STREAM_WEIGHT_NOISE = 4  # noise.kind='weight': the parameter perturbation of each step

# Config fields every experiment may vary inside one compiled program.
TRAINER_TRACED_FIELDS = ("seed", "optimizer.learning_rate", "optimizer.restart_epoch",
                         "noise.eta", "noise.gamma", "noise.std", "noise.temperature",
                         "noise.sigma", "noise.radius", "noise.grad_threshold", "clip.norm")
NOISE_SCHEDULES = ("annealed", "constant")
CLIP_NORM_KINDS = ("frobenius", "spectral")
# noise.kind -> the noise.* fields it uses (gaussian: eta and gamma, or std, by schedule).
NOISE_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "gaussian": ("noise.schedule", "noise.eta", "noise.gamma", "noise.std"),
    "langevin": ("noise.temperature",),
    "anticorrelated": ("noise.sigma",),
    "multiplicative": ("noise.sigma",),
    "relative": ("noise.sigma", "noise.relative_to"),
    "perturbed": ("noise.radius", "noise.grad_threshold", "noise.wait"),
    "weight": ("noise.sigma",),
}
# Per-step diagnostics logged per epoch as their mean (train_<name>) and max
# (train_<name>_max); clipped_fraction only as its mean.
DIAGNOSTICS_WITH_MAX = ("grad_norm", "clipped_grad_norm", "noise_norm", "noise_to_grad")
# A step counts as clipped when clipping shrank a leaf's squared norm by more than this
# (relative): two float32 sums of the same unclipped leaf may differ in the last bits.
CLIPPED_RTOL = 2.0**-16
# Per-step output marking the steps whose diagnostics were computed (train.diagnostics_every).
DIAGNOSTIC_SAMPLED = "_diagnosed"


def _is_optax_optimizer(name: str) -> bool:
  factory = getattr(optax, name, None)
  return callable(factory) and "learning_rate" in _params(factory)


# The trainer's own config fields; an experiment declares the rest (Experiment.fields).
FIELDS: dict[str, fields.Field] = {
    "experiment": fields.text(description="a built-in experiment name, a dotted module "
                              "path or a .py file"),
    "seed": fields.integer(0, 2**31 - 1),
    "num_epochs": fields.integer(1),
    "batch_size": fields.integer(1),
    "optimizer.name": fields.text(_is_optax_optimizer, "the name of an optax optimizer "
                                  "taking learning_rate, e.g. sgd, adam, adamw, rmsprop"),
    "optimizer.learning_rate": fields.number(0, low_open=True),
    "optimizer.decay_every_epochs": fields.integer(0),
    "optimizer.decay_factor": fields.number(0, 1, low_open=True),
    "optimizer.decay_offset_epochs": fields.integer(0, default=0),
    "optimizer.restart_epoch": fields.integer(0, default=0),
    "optimizer.eps": fields.optional(fields.number(0, low_open=True, default=None),
                                     "the optimizer's own default"),
    "optimizer.momentum": fields.optional(fields.number(0, 1, high_open=True, default=None),
                                          "no momentum"),
    "clip.norm": fields.optional(fields.number(0, low_open=True, inf="no clipping"),
                                 "no clipping"),
    "clip.per_leaf": fields.flag(),
    "clip.norm_kind": fields.choice(*CLIP_NORM_KINDS, default="frobenius"),
    "noise.kind": fields.choice(*NOISE_KIND_FIELDS, default="gaussian"),
    "noise.schedule": fields.choice(*NOISE_SCHEDULES),
    "noise.eta": fields.number(0),
    "noise.gamma": fields.number(0),
    "noise.std": fields.number(0),
    "noise.temperature": fields.number(0, default=0.0),
    "noise.sigma": fields.number(0, default=0.0),
    "noise.relative_to": fields.choice("gradient", "params", default="gradient"),
    "noise.radius": fields.number(0, default=0.0),
    "noise.grad_threshold": fields.number(0, inf="no gradient test", default=float("inf")),
    "noise.wait": fields.integer(0, 2**31 - 1, default=0),
    "train.runs_per_batch": fields.optional(fields.integer(1, default=None),
                                            "chosen from the device's memory"),
    "train.eval_every_epochs": fields.integer(1),
    "train.eval_batch_size": fields.integer(1),
    "train.checkpoint_every_epochs": fields.integer(0),
    "train.diagnostics": fields.flag(default=True),
    "train.diagnostics_per_leaf": fields.flag(default=False),
    "train.diagnostics_every": fields.integer(1, default=1),
}


def field_value(config: ml_collections.ConfigDict | GroupConfig, name: str) -> Any:
  """Trainer field ``name`` (dotted) of ``config``, or its declared default where the
  config lacks it (a config written before the field existed; runs get every default
  from ``fields.complete``, configs built in code may not)."""
  *path, leaf = name.split(".")
  node = config
  for part in path:
    node = node[part]
  return node.get(leaf, FIELDS[name].default)


def validate(config: ml_collections.ConfigDict, experiment: Experiment,
             source: Callable[[str], str] = lambda name: "") -> None:
  """Checks every field of one run's config; raises UsageError naming the field.

  ``source(name)`` says where a field's value came from, for the message.
  """
  fields.check(config, {**FIELDS, **experiment.fields}, source,
               owner=f"the trainer or experiment {experiment.name!r}")
  optimizer = getattr(optax, config.optimizer.name)
  if (field_value(config, "optimizer.eps") is not None
      and "eps" not in _params(optimizer)):
    raise UsageError(f"config field optimizer.eps={config.optimizer.eps}{source('optimizer.eps')}"
                     f": optax.{config.optimizer.name} takes no eps; accepted: None, or an "
                     "optimizer with an eps (adam, adamw, adagrad, rmsprop, ...).",
                     field="optimizer.eps")
  experiment.validate(config)


def unused_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
  """Trainer fields that ``config`` does not use, each with the reason: a sweep over one
  of them would give runs that repeat each other."""
  kind = field_value(config, "noise.kind")
  used = NOISE_KIND_FIELDS[kind]
  reason = f"noise.kind={kind!r} uses {', '.join(used)}"
  unused = {name: reason for kinds in NOISE_KIND_FIELDS.values() for name in kinds
            if name not in used}
  if kind == "gaussian" and config.noise.schedule == "annealed":
    unused["noise.std"] = "noise.schedule='annealed' uses noise.eta and noise.gamma"
  elif kind == "gaussian":
    reason = f"noise.schedule={config.noise.schedule!r} uses noise.std"
    unused.update({"noise.eta": reason, "noise.gamma": reason})
  if not field_value(config, "train.diagnostics"):
    unused["train.diagnostics_per_leaf"] = "train.diagnostics=False logs no diagnostics"
    unused["train.diagnostics_every"] = "train.diagnostics=False logs no diagnostics"
  if config.clip.norm is None or config.clip.norm == float("inf"):
    reason = f"clip.norm={config.clip.norm} means no clipping"
    unused.update({"clip.per_leaf": reason, "clip.norm_kind": reason})
  if not config.optimizer.decay_every_epochs:
    reason = "optimizer.decay_every_epochs=0 means a constant learning rate"
    unused.update({"optimizer.restart_epoch": reason, "optimizer.decay_offset_epochs": reason,
                   "optimizer.decay_factor": reason})
  return unused


def check_data(config: ml_collections.ConfigDict, data: Dataset,
               source: Callable[[str], str] = lambda name: "") -> None:
  """Checks the fields that depend on the loaded data; raises UsageError."""
  if config.batch_size > data.num_train:
    raise UsageError(f"config field batch_size={config.batch_size}{source('batch_size')} "
                     f"is larger than the training set ({data.num_train} examples: "
                     f"{data.description}); accepted: at most {data.num_train}.",
                     field="batch_size")


def _params(fn: Callable) -> tuple[str, ...]:
  try:
    return tuple(inspect.signature(fn).parameters)
  except (TypeError, ValueError):
    return ()


def traced_fields(experiment: Experiment) -> tuple[str, ...]:
  return TRAINER_TRACED_FIELDS + tuple(experiment.traced_fields)


def group_key(config: ml_collections.ConfigDict, experiment: Experiment) -> str:
  """Identifies the compile group: the config without its traced fields."""
  flat = _flatten(config.to_dict())
  for name in traced_fields(experiment):
    flat.pop(name, None)
  flat["<code>"] = experiment.code_choices(config)
  return json.dumps(flat, sort_keys=True, default=str)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def run_hparams(config: ml_collections.ConfigDict, experiment: Experiment) -> dict[str, np.ndarray]:
  """The per-run traced values of ``config``."""
  hp = {
      "seed": np.int32(config.seed),
      "learning_rate": np.float32(config.optimizer.learning_rate),
      "restart_epoch": np.int32(config.optimizer.get("restart_epoch", 0)),
      "eta": np.float32(config.noise.eta),
      "gamma": np.float32(config.noise.gamma),
      "std": np.float32(config.noise.std),
      "temperature": np.float32(field_value(config, "noise.temperature")),
      "sigma": np.float32(field_value(config, "noise.sigma")),
      "radius": np.float32(field_value(config, "noise.radius")),
      "grad_threshold": np.float32(field_value(config, "noise.grad_threshold")),
      "clip_norm": np.float32(np.inf if config.clip.norm is None else config.clip.norm),
  }
  for name, value in experiment.hparams(config).items():
    hp[name] = np.asarray(value, np.float32)
  return hp


class Stages(NamedTuple):
  """One run's optimizer as its three stages, applied in this order (Neelakantan et al.
  2015, sec. 2); ``optax.chain(*stages)`` is the optimizer itself.

  Attributes:
    clip: raw gradient -> clipped gradient (stateless).
    noise: clipped gradient -> noisy gradient (``noise.kind``; the identity for
      ``weight``, whose noise perturbs the parameters instead, :func:`weight_noise`).
    optimizer: noisy gradient -> parameter update (the optax optimizer).
  """

  clip: optax.GradientTransformation
  noise: optax.GradientTransformation
  optimizer: optax.GradientTransformation


def make_optimizer(config: ml_collections.ConfigDict, hp: dict[str, jax.Array],
                   noise_key: jax.Array, steps_per_epoch: int) -> optax.GradientTransformation:
  """clip -> noise -> optimizer (Neelakantan et al. 2015, sec. 2) from traced values:
  ``optax.chain`` of :func:`make_stages`, whose state is the tuple of the stages' states."""
  return optax.chain(*make_stages(config, hp, noise_key, steps_per_epoch))


def make_stages(config: ml_collections.ConfigDict, hp: dict[str, jax.Array],
                noise_key: jax.Array, steps_per_epoch: int) -> Stages:
  """The clip, noise and optimizer stages of one run, from traced values.

  With ``optimizer.decay_every_epochs`` = N > 0 the learning rate of epoch e is
  ``learning_rate * decay_factor ** floor((s + decay_offset_epochs) / N)``, s = e before
  ``hp["restart_epoch"]`` (optimizer.restart_epoch) and e - restart_epoch from it on: a
  fresh schedule from that epoch, as MemN2N's softmax stage after linear start. Clipping
  uses the Frobenius or spectral norm (``clip.norm_kind``), per leaf or global; a clip
  norm of inf returns the gradient bit for bit. The noise stage is :func:`noise_stage`.
  """
  learning_rate: Any = hp["learning_rate"]
  every = config.optimizer.decay_every_epochs
  if every:
    offset = config.optimizer.get("decay_offset_epochs", 0)
    factor = config.optimizer.decay_factor

    def schedule(count: jax.Array) -> jax.Array:
      epoch = count // steps_per_epoch
      stage_epoch = jnp.where(epoch >= hp["restart_epoch"], epoch - hp["restart_epoch"], epoch)
      return hp["learning_rate"] * factor ** ((stage_epoch + offset) // every)

    learning_rate = schedule

  return Stages(make_clip(config, hp), noise_stage(config, hp, noise_key, learning_rate),
                make_update(config, learning_rate))


def make_update(config: ml_collections.ConfigDict,
                learning_rate: Any) -> optax.GradientTransformation:
  """``optax.<optimizer.name>(learning_rate, eps=optimizer.eps)``, then with
  ``optimizer.momentum`` = mu the heavy-ball average of its updates,
  u_t = d_t + mu * u_{t-1} (``optax.trace``; for sgd the same as its own momentum), as
  GRU4Rec's Adagrad with momentum (Hidasi et al. 2015, sec. 4)."""
  factory = getattr(optax, config.optimizer.name)
  eps = field_value(config, "optimizer.eps")
  optimizer = factory(learning_rate=learning_rate, **({} if eps is None else {"eps": eps}))
  momentum = field_value(config, "optimizer.momentum")
  return optimizer if momentum is None else optax.chain(optimizer, optax.trace(momentum))


def make_clip(config: ml_collections.ConfigDict,
              hp: dict[str, jax.Array]) -> optax.GradientTransformation:
  """Clipping by the traced ``hp["clip_norm"]``: Frobenius or spectral norm
  (``clip.norm_kind``), per leaf or global."""
  if config.clip.get("norm_kind", "frobenius") == "spectral":
    return gradnoise.clip_by_spectral_norm(hp["clip_norm"], config.clip.per_leaf)
  if config.clip.per_leaf:
    return gradnoise.clip_by_leaf_norm(hp["clip_norm"])
  return gradnoise.clip_by_global_norm(hp["clip_norm"])


def noise_stage(config: ml_collections.ConfigDict, hp: dict[str, jax.Array],
                noise_key: jax.Array, learning_rate: Any) -> optax.GradientTransformation:
  """The gradient noise transform of ``noise.kind``, its strengths traced from ``hp``.

  gaussian: :func:`gradnoise.add_gradient_noise`, sigma_t^2 = eta / (1 + t)^gamma
  (``noise.schedule='annealed'``) or sigma_t = std (``'constant'``); langevin:
  :func:`gradnoise.add_langevin_noise` at ``learning_rate`` (the optimizer's rate or
  schedule) and temperature T; anticorrelated, multiplicative and relative (``relative_to``):
  their ``gradnoise.add_*_noise`` at sigma; perturbed: :func:`gradnoise.add_pgd_perturbation`
  (radius, grad_threshold, wait); weight: the identity (:func:`weight_noise` perturbs the
  parameters). Every kind draws from ``noise_key`` as a pure function of (key, update t).
  """
  kind = field_value(config, "noise.kind")
  if kind == "gaussian" and config.noise.schedule == "constant":
    return gradnoise.add_gradient_noise(schedule=gradnoise.constant_std(hp["std"]),
                                        key=noise_key)
  if kind == "gaussian":
    return gradnoise.add_gradient_noise(hp["eta"], hp["gamma"], noise_key)
  if kind == "langevin":
    return gradnoise.add_langevin_noise(learning_rate, hp["temperature"], noise_key)
  if kind == "anticorrelated":
    return gradnoise.add_anticorrelated_noise(hp["sigma"], noise_key)
  if kind == "multiplicative":
    return gradnoise.add_multiplicative_noise(hp["sigma"], noise_key)
  if kind == "relative":
    return gradnoise.add_relative_noise(hp["sigma"], noise_key,
                                        relative_to=field_value(config, "noise.relative_to"))
  if kind == "perturbed":
    return gradnoise.add_pgd_perturbation(hp["radius"], hp["grad_threshold"],
                                          field_value(config, "noise.wait"), noise_key)
  return optax.identity()


class RunState(NamedTuple):
  params: Any
  opt_state: Any
  diverged: jax.Array  # bool: loss, a gradient or a parameter became NaN/Inf; then frozen
  extra: dict[str, Any]  # the experiment's per-run state outside the gradient


def _stream(hp: dict[str, jax.Array], stream: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(hp["seed"]), stream)


def batch_order(hp: dict[str, jax.Array], epoch: jax.Array, num_train: int, steps: int,
                batch_size: int) -> jax.Array:
  """Example indices [steps, batch_size] of an epoch: a permutation from the data stream.

  Depends only on the seed and the epoch (the remainder of the permutation is dropped).
  """
  order_key = jax.random.fold_in(_stream(hp, STREAM_DATA), epoch)
  order = jax.random.permutation(order_key, num_train)[:steps * batch_size]
  return order.reshape(steps, batch_size)


@dataclasses.dataclass(frozen=True)
class GroupSpec:
  """What the per-run functions of a compile group share (static, not traced).

  Attributes:
    experiment: the experiment.
    config: the group's config as its program sees it (traced fields guarded).
    num_train: training examples (per task).
    batch_size: training batch size.
    tasks: the data arrays have a leading task axis, from which each run takes the one its
      ``hp["task"]`` selects (``Dataset.num_tasks``).
  """

  experiment: Experiment
  config: GroupConfig
  num_train: int
  batch_size: int
  tasks: bool = False

  @property
  def steps(self) -> int:
    """Training steps per epoch (>= 1: ``check_data`` ran before)."""
    return self.num_train // self.batch_size


def take(spec: GroupSpec, arrays: dict[str, Any], hp: dict[str, jax.Array],
         index: Any) -> dict[str, jax.Array]:
  """Rows ``index`` of the arrays (of the run's task, with tasks): a gather, no copy."""
  if spec.tasks:
    return {k: v[hp["task"].astype(jnp.int32), index] for k, v in arrays.items()}
  return {k: v[index] for k, v in arrays.items()}


def epoch_order(spec: GroupSpec, hp: dict[str, jax.Array], epoch: Any) -> jax.Array:
  """Example indices [steps, batch_size] of an epoch: the experiment's ``batch_order``
  (e.g. session-parallel batches in a fixed order) or, by default, :func:`batch_order`."""
  order = spec.experiment.batch_order or batch_order
  return order(hp, epoch, spec.num_train, spec.steps, spec.batch_size)


def freeze(diverged: jax.Array, old: Any, new: Any) -> Any:
  """``old`` where the run has diverged, else ``new`` (leaf by leaf)."""
  return jax.tree.map(lambda o, n: jax.lax.select(diverged, o, n), old, new)


def init_run(spec: GroupSpec, hp: dict[str, jax.Array], train_data: dict[str, Any]) -> RunState:
  """One run's initial state from its hyperparameters and a sample batch of its data.

  The sample batch is the first batch of the run's epoch 0.
  """
  key = _stream(hp, STREAM_INIT)
  first = epoch_order(spec, hp, 0)[0]
  batch = take(spec, train_data, hp, first)
  params = spec.experiment.init_params(key, batch, hp, spec.config)
  tx = make_optimizer(spec.config, hp, _stream(hp, STREAM_NOISE), spec.steps)
  hooks = spec.experiment.state
  extra = hooks.init(key, batch, hp, spec.config) if hooks else {}
  return RunState(params, tx.init(params), jnp.zeros([], bool), extra)


def weight_noise(params: Any, hp: dict[str, jax.Array], step: jax.Array) -> Any:
  """The parameters at which ``noise.kind='weight'`` evaluates the gradient of step t:

      theta_t + sigma * xi_t,    xi_t ~ N(0, I),

  weight noise (Graves 2011, "Practical Variational Inference for Neural Networks", NIPS;
  Orvieto et al. 2023, "Explicit Regularization in Overparametrized Models via Noise
  Injection", AISTATS): the update computed from that gradient is applied to the
  unperturbed theta_t. xi_t is the unit noise of :func:`gradnoise.add_gradient_noise` at
  update ``step`` for the key ``fold_in(key(seed), STREAM_WEIGHT_NOISE)``: one normal per
  element of each inexact leaf, of its shape, in float32 (float64 for float64 leaves), a
  pure function of (seed, t). With sigma = ``hp["sigma"]`` = 0 the parameters are returned
  bit for bit; integer and bool leaves pass through.
  """
  leaves, treedef, inexact = split_leaves(params)
  xi = unit_noise_at(_stream(hp, STREAM_WEIGHT_NOISE), step, leaves, inexact, "auto")
  sigma = hp["sigma"]
  leaves = [add_where(p, sigma.astype(u.real.dtype) * u, sigma > 0) if n else p
            for p, n, u in zip(leaves, inexact, xi)]
  return jax.tree.unflatten(treedef, leaves)


def _leaf_name(path: tuple) -> str:
  """``layer_0/kernel`` for the tree path of a leaf."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


# Kinds whose noise stage itself reduces over the clipped gradient: for them the
# diagnostics' norms are dots, which XLA does not fuse with those reductions (a fused
# sibling reduction changed relative's and perturbed's numbers by an ulp). For every other
# kind they are plain reductions, one per leaf shape and dtype (see _sum_squares).
KINDS_REDUCING_THE_GRADIENT = ("relative", "perturbed")


def _sum_squares(trees: list[list[jax.Array]], as_dots: bool) -> list[list[jax.Array]]:
  """sum |x|^2 of every leaf of each of ``trees`` (lists of inexact arrays of any shapes):
  ``out[t][i]`` is the scalar of leaf i of tree t, in the leaf's working dtype (float32;
  float64 for float64/complex128 leaves; a complex leaf sums its real and imaginary parts).

  With ``as_dots`` one dot product per leaf (see ``KINDS_REDUCING_THE_GRADIENT``).
  Otherwise the leaves of one shape and dtype, from all trees, go into one variadic
  ``lax.reduce``: one kernel reading them all, where a reduction per leaf or a stack of
  the leaves costs a kernel (or a copy) per leaf and tree, microseconds each on XLA:CPU
  (the kernel counts of benchmarks/README.md).
  """
  def parts(x):
    split = (x.real, x.imag) if jnp.iscomplexobj(x) else (x,)
    return [p.astype(_working_dtype(x.dtype)) for p in split]

  if as_dots:
    return [[sum(jnp.dot(jnp.ravel(p), jnp.ravel(p), precision=jax.lax.Precision.HIGHEST)
                 for p in parts(x)) for x in leaves] for leaves in trees]
  groups: dict[tuple, list[tuple[int, int, int]]] = {}
  squares = []
  for t, leaves in enumerate(trees):
    for i, x in enumerate(leaves):
      for p in parts(x):
        groups.setdefault((p.shape, p.dtype), []).append((t, i, len(squares)))
        squares.append(p * p)
  out: list[list[Any]] = [[0] * len(leaves) for leaves in trees]
  for (shape, dtype), members in groups.items():
    operands = [squares[k] for _, _, k in members]
    sums = jax.lax.reduce(operands, [jnp.zeros([], dtype)] * len(operands),
                          lambda xs, ys: tuple(x + y for x, y in zip(xs, ys)),
                          tuple(range(len(shape))))
    for (t, i, _), total in zip(members, sums):
      out[t][i] = out[t][i] + total
  return out


def _ratio(noise: jax.Array, grad: jax.Array) -> jax.Array:
  """noise / grad, with 0 / 0 = 0 (no noise on a zero gradient); x / 0 = inf for x > 0."""
  return jnp.where(noise == 0, 0, noise / grad)


def diagnostics(grads: Any, clipped: Any, noise: Any, per_leaf: bool,
                as_dots: bool = False) -> dict[str, jax.Array]:
  """One step's diagnostics (scalars; ``train_epoch`` logs their epoch mean and max).

  Over the inexact leaves of the trees (each shaped as the parameters), in float32
  (float64 for float64 leaves):

      grad_norm = ||g||,  clipped_grad_norm = ||clip(g)||,  noise_norm = ||n||,
      noise_to_grad = ||n|| / ||clip(g)|| (0 when ||n|| = 0, inf when only ||clip(g)|| = 0),
      clipped_fraction = 1 if ||clip(g)_leaf||^2 < (1 - CLIPPED_RTOL) ||g_leaf||^2 for
        any leaf (clipping shrank it), else 0,

  ||.|| the global L2 norm and n the injected noise: the noisy minus the clipped gradient,
  or for weight noise the parameter perturbation. With ``per_leaf``, also
  ``<name>/<leaf path>`` (e.g. ``noise_norm/layer_0/kernel``) for the four norms and
  ratio, each leaf's own. clipped_fraction compares norms, not elements: an elementwise
  comparison of clip(g) with g makes XLA compile the noise stages that reduce over clip(g)
  (relative, perturbed) differently, changing the training numbers by an ulp.
  """
  paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(grads)]
  grads = [jnp.asarray(x) for x in jax.tree.leaves(grads)]
  clipped = [jnp.asarray(x) for x in jax.tree.leaves(clipped)]
  noise = [jnp.asarray(x) for x in jax.tree.leaves(noise)]
  inexact = [i for i, x in enumerate(grads) if jnp.issubdtype(x.dtype, jnp.inexact)]
  names = ("grad_norm", "clipped_grad_norm", "noise_norm")
  squares = dict(zip(names, _sum_squares([[tree[i] for i in inexact]
                                          for tree in (grads, clipped, noise)], as_dots)))
  out = {name: jnp.sqrt(sum(s)) for name, s in squares.items()}
  out["noise_to_grad"] = _ratio(out["noise_norm"], out["clipped_grad_norm"])
  changed = [c < g * (1 - CLIPPED_RTOL)
             for c, g in zip(squares["clipped_grad_norm"], squares["grad_norm"])]
  out["clipped_fraction"] = (jnp.stack(changed).any() if changed
                             else jnp.zeros([], bool)).astype(jnp.float32)
  if per_leaf:
    for j, i in enumerate(inexact):
      leaf = {name: jnp.sqrt(s[j]) for name, s in squares.items()}
      leaf["noise_to_grad"] = _ratio(leaf["noise_norm"], leaf["clipped_grad_norm"])
      out.update({f"{name}/{_leaf_name(paths[i])}": v for name, v in leaf.items()})
  return out


def _difference(a: Any, b: Any) -> Any:
  """a - b leaf by leaf, inexact leaves in their working dtype (others: zeros)."""
  def diff(x, y):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      return jnp.zeros(x.shape, jnp.float32)
    work = jnp.promote_types(x.dtype, _working_dtype(x.dtype))
    return x.astype(work) - y.astype(work)
  return jax.tree.map(diff, a, b)


def _sampled_diagnostics(config: ml_collections.ConfigDict, steps_per_epoch: int,
                         step: jax.Array, grads: Any, clipped: Any,
                         noisy_and_base: tuple[Any, Any]) -> dict[str, jax.Array]:
  """:func:`diagnostics` of update ``step``. With ``train.diagnostics_every`` = k > 1, only
  on the steps whose index within the epoch is a multiple of k (the epoch's first step
  always), marked ``DIAGNOSTIC_SAMPLED`` = 1.0; the other steps give zeros and 0.0 and
  skip the computation (a ``lax.cond``: the step index is the same for every run), except
  for the kinds in ``KINDS_REDUCING_THE_GRADIENT``. The noise is the difference of the
  ``noisy_and_base`` trees."""
  def compute():
    noise = _difference(*noisy_and_base)
    out = diagnostics(grads, clipped, noise, field_value(config, "train.diagnostics_per_leaf"),
                      field_value(config, "noise.kind") in KINDS_REDUCING_THE_GRADIENT)
    return {**out, DIAGNOSTIC_SAMPLED: jnp.ones([], jnp.float32)}

  every = field_value(config, "train.diagnostics_every")
  if every == 1:
    out = compute()
    del out[DIAGNOSTIC_SAMPLED]  # every step: plain means
    return out
  sample = (step % steps_per_epoch) % every == 0
  if field_value(config, "noise.kind") in KINDS_REDUCING_THE_GRADIENT:
    # A cond would change how XLA compiles these kinds' own reductions (their numbers
    # by an ulp): computed at every step, only the marks follow k (no saving).
    return {**compute(), DIAGNOSTIC_SAMPLED: sample.astype(jnp.float32)}
  shapes = jax.eval_shape(compute)
  return jax.lax.cond(sample, compute,
                      lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))


def train_step(spec: GroupSpec, stages: Stages, state: RunState,
               batch: dict[str, jax.Array], key: jax.Array, hp: dict[str, jax.Array],
               step: jax.Array) -> tuple[RunState, dict[str, jax.Array]]:
  """Update ``step`` (0-based over the run) of one run: loss and gradient, clip -> noise
  -> optimizer, extra state.

  With ``noise.kind='weight'`` the gradient is taken at :func:`weight_noise` of the
  parameters. A run whose loss, any gradient or any new parameter is non-finite is marked
  diverged and keeps its last finite state. Returns the new state and the step's metrics:
  loss, aux and, with ``train.diagnostics``, :func:`diagnostics` (the stages are applied
  one by one as ``optax.chain`` would, so diagnostics on or off give the same numbers).
  """
  experiment, config = spec.experiment, spec.config
  weight = field_value(config, "noise.kind") == "weight"
  at = weight_noise(state.params, hp, step) if weight else state.params
  (loss, aux), grads = jax.value_and_grad(experiment.loss_fn, has_aux=True)(
      at, batch, key, {**hp, **state.extra}, config)
  aux = dict(aux)
  extra = {**state.extra, **aux.pop(STATE_KEY, {})}
  clip_state, noise_state, inner_state = state.opt_state
  clipped, clip_state = stages.clip.update(grads, clip_state, state.params)
  noisy, noise_state = stages.noise.update(clipped, noise_state, state.params)
  updates, inner_state = stages.optimizer.update(noisy, inner_state, state.params)
  opt_state = (clip_state, noise_state, inner_state)
  params = optax.apply_updates(state.params, updates)
  diagnosed = {}
  if field_value(config, "train.diagnostics"):
    diagnosed = _sampled_diagnostics(config, spec.steps, step, grads, clipped,
                                     (at, state.params) if weight else (noisy, clipped))
  if experiment.state and experiment.state.after_step:
    extra = experiment.state.after_step(extra, aux, {**hp, **state.extra}, config)
  # One reduction per leaf, fused with the ops producing them. Clipping could hide an inf
  # gradient, so gradients and new params (i.e. updates) both count.
  finite = [jnp.isfinite(loss).all()] + [jnp.isfinite(x).all()
                                         for x in jax.tree.leaves((grads, params))]
  diverged = state.diverged | ~jnp.stack(finite).all()
  new_state = RunState(freeze(diverged, state.params, params),
                       freeze(diverged, state.opt_state, opt_state), diverged,
                       freeze(diverged, state.extra, extra))
  return new_state, {"loss": loss, **aux, **diagnosed}


def train_epoch(spec: GroupSpec, state: RunState, hp: dict[str, jax.Array],
                train_data: dict[str, Any],
                epoch: jax.Array) -> tuple[RunState, dict[str, jax.Array]]:
  """One epoch of one run: ``train_step`` scanned over the epoch's batches.

  Returns the state and the epoch's metrics: ``train_<name>`` (mean over steps),
  ``train_<name>_max`` (max over steps) for the diagnostics in ``DIAGNOSTICS_WITH_MAX``
  (``train_<name>_max/<leaf>`` per leaf) and ``state_<name>`` (scalar entries of the
  extra state).
  """
  hp = {**hp, "epoch": epoch}
  stages = make_stages(spec.config, hp, _stream(hp, STREAM_NOISE), spec.steps)
  order = epoch_order(spec, hp, epoch)
  dropout_stream = _stream(hp, STREAM_DROPOUT)

  def step(state, inputs):
    indices, step_num = inputs
    return train_step(spec, stages, state, take(spec, train_data, hp, indices),
                      jax.random.fold_in(dropout_stream, step_num), hp, step_num)

  step_nums = epoch * spec.steps + jnp.arange(spec.steps)
  state, per_step = jax.lax.scan(step, state, (order, step_nums))
  # [steps] 1.0 on the diagnosed steps, with train.diagnostics_every > 1.
  sampled = per_step.pop(DIAGNOSTIC_SAMPLED, None)
  diagnosed = field_value(spec.config, "train.diagnostics")
  metrics = {}
  for k, v in per_step.items():
    name, slash, leaf = k.partition("/")
    diagnostic = diagnosed and (name in DIAGNOSTICS_WITH_MAX or name == "clipped_fraction")
    if diagnostic and sampled is not None:
      metrics[f"train_{k}"] = jnp.sum(jnp.where(sampled > 0, v, 0)) / jnp.sum(sampled)
      v = jnp.where(sampled > 0, v, -jnp.inf)
    else:
      metrics[f"train_{k}"] = jnp.mean(v)
    if diagnostic and name in DIAGNOSTICS_WITH_MAX:
      metrics[f"train_{name}_max{slash}{leaf}"] = jnp.max(v)
  metrics.update({f"state_{k}": jnp.asarray(v, jnp.float32)
                  for k, v in state.extra.items() if getattr(v, "ndim", None) == 0})
  return state, metrics


def evaluate(spec: GroupSpec, state: RunState, hp: dict[str, jax.Array],
             eval_data: dict[str, dict[str, Any]],
             epoch: jax.Array) -> tuple[dict[str, jax.Array], dict[str, Any]]:
  """Metrics ``<split>_<metric>`` of one run over each eval split (masked means), and its
  extra state after the experiment's ``after_eval`` hook."""
  experiment, config = spec.experiment, spec.config
  hp = {**hp, **state.extra, "epoch": epoch}
  out = {}
  for split, arrays in eval_data.items():
    num_batches = arrays["_mask"].shape[1 if spec.tasks else 0]
    batches = {k: v for k, v in arrays.items() if k != "_mask"}
    values = jax.lax.map(
        lambda i: experiment.eval_fn(state.params, take(spec, batches, hp, i), hp, config),
        jnp.arange(num_batches))
    mask = take(spec, {"m": arrays["_mask"]}, hp, slice(None))["m"]
    for name, v in values.items():
      out[f"{split}_{name}"] = jnp.sum(v * mask) / jnp.sum(mask)
  extra = state.extra
  if experiment.state and experiment.state.after_eval:
    extra = freeze(state.diverged, extra, experiment.state.after_eval(extra, out, hp, config))
  return out, extra


@dataclasses.dataclass
class GroupProgram:
  """The compiled functions of one compile group (built once, reused for every batch).

  Attributes:
    init: ``(hp [R], train_data) -> RunState [R]``.
    train_epoch: ``(state [R], hp [R], train_data, epoch) -> (state, metrics [R])``; donates
      the state.
    evaluate: ``(state [R], hp [R], eval_data, epoch) -> (metrics [R], extra [R])``.
    steps_per_epoch: training steps per epoch.
  """

  init: Callable
  train_epoch: Callable
  evaluate: Callable
  steps_per_epoch: int


def group_config(config: ml_collections.ConfigDict, experiment: Experiment) -> GroupConfig:
  """``config`` as the group's program sees it: traced fields guarded, code choices set."""
  return GroupConfig(config, traced_fields(experiment), experiment.code_choices(config))


def build_program(experiment: Experiment, config: ml_collections.ConfigDict,
                  num_train: int, tasks: bool = False) -> GroupProgram:
  """``jit(vmap(...))`` of :func:`init_run`, :func:`train_epoch` and :func:`evaluate` for
  the compile group of ``config``; R runs at once, data shared (not vmapped)."""
  spec = GroupSpec(experiment, group_config(config, experiment), num_train,
                   config.batch_size, tasks)
  shared = (0, 0, None, None)
  return GroupProgram(
      init=jax.jit(jax.vmap(functools.partial(init_run, spec), in_axes=(0, None))),
      train_epoch=jax.jit(jax.vmap(functools.partial(train_epoch, spec), in_axes=shared),
                          donate_argnums=0),
      evaluate=jax.jit(jax.vmap(functools.partial(evaluate, spec), in_axes=shared)),
      steps_per_epoch=spec.steps,
  )


def eval_batches(data: Dataset, batch_size: int) -> dict[str, dict[str, np.ndarray]]:
  """Each eval split padded to whole batches, shaped [num_batches, batch, ...], with a mask
  (after the task axis, [tasks, num_batches, batch, ...], when ``data.num_tasks``)."""
  axis = 1 if data.num_tasks else 0
  out = {}
  for split, arrays in data.evals.items():
    n = next(iter(arrays.values())).shape[axis]
    size = min(batch_size, n)
    num = -(-n // size)
    padded = {}
    for k, v in arrays.items():
      lead = v.shape[:axis]
      pad = np.zeros(lead + (num * size - n,) + v.shape[axis + 1:], v.dtype)
      padded[k] = np.concatenate([v, pad], axis).reshape(lead + (num, size) + v.shape[axis + 1:])
    mask = (np.arange(num * size) < n).astype(np.float32).reshape(num, size)
    padded["_mask"] = np.broadcast_to(mask, lead + mask.shape).copy()
    out[split] = padded
  return out


def run_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes; the run axis is sharded over it."""
  return Mesh(np.array(jax.devices()), ("runs",))


def to_global(tree: Any, sharding: NamedSharding) -> Any:
  """Numpy arrays (the same full values on every process) as global jax.Arrays.

  Each process transfers only the slices its own devices hold.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index]),
      tree)


def fetch(tree: Any) -> Any:
  """Global arrays as numpy on every process (gathered across processes if needed)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def batches_of_runs(num_runs: int, runs_per_batch: int) -> Iterator[range]:
  for start in range(0, num_runs, runs_per_batch):
    yield range(start, min(start + runs_per_batch, num_runs))


def stack_hparams(hps: Sequence[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
  """Stacks per-run values, repeating the last run to pad to ``size`` (a device multiple)."""
  padded = list(hps) + [hps[-1]] * (size - len(hps))
  return {k: np.stack([hp[k] for hp in padded]) for k in hps[0]}


def padded_size(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def best_of(name: str, values: Sequence[float]) -> float:
  """Best value of an eval metric over time: max for accuracies, min for errors/losses."""
  finite = [v for v in values if math.isfinite(v)]
  if not finite:
    return float("nan")
  return min(finite) if ("error" in name or "loss" in name) else max(finite)


class GroupCallbacks(NamedTuple):
  """How train_group reports: metric rows, finished batches, restores, progress."""

  on_metrics: Callable[[dict[str, Any]], None]
  on_batch_done: Callable[[dict[int, dict[str, Any]]], None] = lambda results: None
  on_restore: Callable[[Sequence[int], int], None] = lambda run_ids, epoch: None
  on_progress: Callable[[int, dict[str, float]], None] = lambda run_steps, metrics: None
  # (runs at once, seconds): the compilation time of the training epoch, measured as how
  # much longer the first epoch took than the second.
  on_compiled: Callable[[int, float], None] = lambda runs, seconds: None


def train_group(
    experiment: Experiment,
    runs: Sequence[tuple[int, ml_collections.ConfigDict]],
    data: Dataset,
    callbacks: GroupCallbacks,
    checkpoint_dir: str | None = None,
    finished: Collection[int] = (),
    checkpoint_tag: str = "",
) -> dict[int, dict[str, Any]]:
  """Trains the runs of one compile group; returns run id -> final results.

  The runs go in batches of ``train.runs_per_batch`` (None: chosen from the device's
  memory, ``devices.runs_per_batch``), each padded to a multiple of the
  device count and sharded over the devices. A batch whose runs are all in ``finished`` is
  skipped. With ``checkpoint_dir``, each batch resumes from its newest checkpoint (written
  with the same ``checkpoint_tag``, which identifies the sweep) and saves
  every ``train.checkpoint_every_epochs`` epochs and at its end.
  """
  config = runs[0][1]
  program = build_program(experiment, config, data.num_train, bool(data.num_tasks))
  mesh = run_mesh()
  run_sharding = NamedSharding(mesh, PartitionSpec("runs"))
  replicated = NamedSharding(mesh, PartitionSpec())
  train_data = to_global(data.train, replicated)
  eval_data = to_global(eval_batches(data, config.train.eval_batch_size), replicated)
  every = config.train.checkpoint_every_epochs
  results: dict[int, dict[str, Any]] = {}
  epoch_seconds: list[float] = []  # of the first two epochs of the first batch trained

  from gradnoise import devices
  per_batch = devices.runs_per_batch(experiment, config, data, len(runs))
  for batch in batches_of_runs(len(runs), per_batch):
    ids = [runs[i][0] for i in batch]
    if all(i in finished for i in ids):
      callbacks.on_progress(len(ids) * config.num_epochs * program.steps_per_epoch, {})
      continue
    hps = [run_hparams(runs[i][1], experiment) for i in batch]
    hp = to_global(stack_hparams(hps, padded_size(len(hps), mesh.size)), run_sharding)
    state = program.init(hp, train_data)
    start, history = 0, {}
    checkpoints = None
    if checkpoint_dir is not None:
      checkpoints = BatchCheckpoints(os.path.join(checkpoint_dir, f"runs_{ids[0]}-{ids[-1]}"),
                                     checkpoint_tag)
      restored = checkpoints.restore_latest(state)
      if restored is not None:
        start, state, history = restored
      callbacks.on_restore(ids, start)
    callbacks.on_progress(len(ids) * start * program.steps_per_epoch, {})
    for epoch in range(start, config.num_epochs):
      started = time.perf_counter()
      state, metrics = program.train_epoch(state, hp, train_data, np.int32(epoch))
      if len(epoch_seconds) < 2:
        jax.block_until_ready(metrics)
        epoch_seconds.append(time.perf_counter() - started)
        if len(epoch_seconds) == 2:  # compilation = the first epoch's extra time
          callbacks.on_compiled(len(ids), max(epoch_seconds[0] - epoch_seconds[1], 0.0))
      last = epoch + 1 == config.num_epochs
      if (epoch + 1) % config.train.eval_every_epochs == 0 or last:
        eval_metrics, extra = program.evaluate(state, hp, eval_data, np.int32(epoch))
        metrics.update(eval_metrics)
        state = state._replace(extra=extra)
      metrics = fetch(metrics)
      for i, run_id in enumerate(ids):
        row = {"run": run_id, "epoch": epoch + 1, "step": (epoch + 1) * program.steps_per_epoch}
        row.update({k: float(v[i]) for k, v in metrics.items()})
        callbacks.on_metrics(row)
      for k, v in metrics.items():
        history.setdefault(k, []).append([float(x) for x in v[:len(ids)]])
      if checkpoints is not None and (last or (every and (epoch + 1) % every == 0)):
        checkpoints.save(epoch + 1, state, history)
      callbacks.on_progress(len(ids) * program.steps_per_epoch,
                            {k: float(np.nanmean(v[:len(ids)])) for k, v in metrics.items()
                             if k in ("train_loss", "test_accuracy", "valid_error")})
    diverged = np.asarray(fetch(state.diverged))
    batch_results = {}
    for i, run_id in enumerate(ids):
      final = {k: v[-1][i] for k, v in history.items()}
      best = {f"best_{k}": best_of(k, [h[i] for h in v]) for k, v in history.items()
              if not k.startswith(("train_", "state_"))}
      batch_results[run_id] = {**final, **best, "diverged": bool(diverged[i])}
    callbacks.on_batch_done(batch_results)
    results.update(batch_results)
  return results
