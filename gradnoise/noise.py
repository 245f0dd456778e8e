"""Annealed Gaussian gradient noise as an optax transformation.

Neelakantan et al. (2015), "Adding Gradient Noise Improves Learning for Very Deep
Networks", arXiv:1511.06807, eq. (1)-(2): at update t (t = 0 for the first update)

    g_t <- g_t + N(0, sigma_t^2),    sigma_t^2 = eta / (1 + t)^gamma.

Randomness. The noise of update ``t`` is a pure function of ``(key, t, tree structure)``:

    step_key = fold_in(key, t)
    fused draw:    z = normal(step_key, (sum of float leaf sizes,), float32),
                   split in tree-flatten order and reshaped to each leaf
    per-leaf draw: z_i = normal(fold_in(step_key, i), leaf_i.shape, float32),
                   i = the leaf's index in the flattened tree

The key never changes in the state, so a run restored from a checkpoint at update ``t``
draws exactly the noise it would have drawn without the interruption.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Schedule = Callable[[jax.Array], jax.Array]
Draw = Literal["auto", "fused", "per_leaf"]

# "auto" draws one fused normal per step up to this many float elements (small models,
# where per-leaf random-number calls dominate the cost) and per leaf above it.
FUSED_DRAW_MAX_ELEMENTS = 1 << 22


class GradientNoiseState(NamedTuple):
  """State of :func:`add_gradient_noise`.

  Attributes:
    count: number of updates applied so far (the ``t`` of the next update), int32.
    key: the noise key (typed key array); constant over training.
    std: the standard deviation sigma_t used by the last update (0 before the first).
  """

  count: jax.Array
  key: jax.Array
  std: jax.Array


def _is_tracer(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_non_negative(name: str, value: Any) -> None:
  """Raises ValueError for a concrete negative or NaN value; traced values pass."""
  if value is None or callable(value) or _is_tracer(value):
    return
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
    raise ValueError(f"{name} must be a non-negative real number, got {value!r}.")
  if np.any(np.isnan(arr)) or np.any(arr < 0):
    raise ValueError(f"{name} must be >= 0, got {value!r}.")


def annealed_std(eta: Any, gamma: Any = 0.55) -> Schedule:
  """Returns ``t -> sqrt(eta / (1 + t)^gamma)`` (Neelakantan et al. 2015, eq. 2).

  ``eta`` is the variance at the first update (t = 0) and ``gamma`` the decay exponent;
  both may be floats or (traced) arrays. The arithmetic is the same as
  ``optax.add_noise``'s, so both give the same sigma_t for the same eta and gamma.
  """
  _check_non_negative("eta", eta)
  _check_non_negative("gamma", gamma)

  def schedule(count: jax.Array) -> jax.Array:
    return jnp.sqrt(eta / (count + 1) ** gamma)

  return schedule


def constant_std(std: Any) -> Schedule:
  """Returns ``t -> std``: fixed noise (the paper's std 0.001 for memory networks)."""
  _check_non_negative("std", std)

  def schedule(count: jax.Array) -> jax.Array:
    del count
    return jnp.asarray(std, jnp.float32)

  return schedule


def as_key(key: Any, name: str = "key") -> jax.Array:
  """Returns ``key`` as a typed PRNG key array, or raises a ValueError.

  Accepts typed keys (``jax.random.key``) and raw uint32 keys (``jax.random.PRNGKey``).
  """
  if isinstance(key, jax.Array) or isinstance(key, np.ndarray) or _is_tracer(key):
    dtype = key.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      return key
    default_shape = jax.random.key_data(jax.random.key(0)).shape
    if dtype == jnp.uint32 and tuple(key.shape[-len(default_shape):]) == default_shape:
      return jax.random.wrap_key_data(key)
  raise ValueError(
      f"{name} must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
      f"got {type(key).__name__}"
      + (f" with dtype {key.dtype} and shape {key.shape}" if hasattr(key, "dtype") else "")
      + ".")


def _is_noisy_leaf(leaf: Any) -> bool:
  return leaf is not None and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def _standard_normal_like(step_key: jax.Array, leaves: list, noisy: list[bool],
                          draw: Draw) -> list:
  """float32 N(0, 1) arrays for the noisy leaves (None elsewhere); see module doc."""
  sizes = [math.prod(jnp.shape(x)) if n else 0 for x, n in zip(leaves, noisy)]
  if draw == "auto":
    draw = "fused" if sum(sizes) <= FUSED_DRAW_MAX_ELEMENTS else "per_leaf"
  if draw == "per_leaf":
    return [
        jax.random.normal(jax.random.fold_in(step_key, i), jnp.shape(x), jnp.float32)
        if n else None for i, (x, n) in enumerate(zip(leaves, noisy))
    ]
  flat = jax.random.normal(step_key, (sum(sizes),), jnp.float32)
  out, offset = [], 0
  for x, n, size in zip(leaves, noisy, sizes):
    out.append(flat[offset:offset + size].reshape(jnp.shape(x)) if n else None)
    offset += size
  return out


def add_gradient_noise(
    eta: Any = None,
    gamma: Any = 0.55,
    *,
    key: Any,
    schedule: Schedule | None = None,
    draw: Draw = "auto",
) -> optax.GradientTransformation:
  """Adds N(0, sigma_t^2) to every floating-point leaf of the updates.

  Neelakantan et al. (2015): sigma_t^2 = eta / (1 + t)^gamma, with t the number of
  earlier updates, so the first update has variance ``eta`` (as ``optax.add_noise``).
  Place it after clipping and before the optimizer::

      optax.chain(optax.clip_by_global_norm(10.0),
                  add_gradient_noise(eta=0.01, key=jax.random.key(0)),
                  optax.sgd(0.1))

  Noise is sampled in float32 and added in float32, then cast to the leaf's dtype;
  integer, bool and None leaves pass through untouched. With sigma_t = 0 (eta = 0) the
  updates are returned unchanged, bit for bit.

  Args:
    eta: base variance (>= 0); a float or a (traced) array, so sweeping it under ``jit``
      or ``vmap`` does not recompile. Give either ``eta`` or ``schedule``.
    gamma: annealing exponent (>= 0), float or array; the paper uses 0.55.
    key: a JAX PRNG key. Different keys give independent noise.
    schedule: instead of eta/gamma, any callable ``count -> std`` (e.g.
      :func:`constant_std`, or an optax schedule wrapped to return a std).
    draw: how the normals are generated (see module doc). ``"fused"``: one draw per
      update for the whole tree, fastest for small models but not shard-local;
      ``"per_leaf"``: one draw per leaf, shard-local when parameters are sharded;
      ``"auto"`` (default): fused up to ``FUSED_DRAW_MAX_ELEMENTS`` float elements.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`GradientNoiseState`.
  """
  if (eta is None) == (schedule is None):
    raise ValueError("Give exactly one of eta (annealed noise) or schedule, "
                     f"got eta={eta!r} and schedule={schedule!r}.")
  if draw not in ("auto", "fused", "per_leaf"):
    raise ValueError(f"draw must be 'auto', 'fused' or 'per_leaf', got {draw!r}.")
  if schedule is None:
    schedule = annealed_std(eta, gamma)
  elif not callable(schedule):
    raise ValueError(f"schedule must be a callable count -> std, got {schedule!r}.")
  key = as_key(key)

  def init_fn(params: optax.Params) -> GradientNoiseState:
    del params
    return GradientNoiseState(count=jnp.zeros([], jnp.int32), key=key,
                              std=jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    std = jnp.asarray(schedule(state.count), jnp.float32)
    leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
    noisy = [_is_noisy_leaf(x) for x in leaves]

    if any(noisy):
      step_key = jax.random.fold_in(state.key, state.count)
      normals = _standard_normal_like(step_key, leaves, noisy, draw)
      # With std == 0 the updates pass unchanged, bit for bit (g + 0 * z turns -0.0 to +0.0).
      leaves = [
          jnp.where(std > 0, (x.astype(jnp.float32) + std * z).astype(x.dtype), x) if n else x
          for x, n, z in zip(leaves, noisy, normals)
      ]
    new_state = GradientNoiseState(count=optax.safe_int32_increment(state.count),
                                   key=state.key, std=std)
    return jax.tree.unflatten(treedef, leaves), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def noisy(
    optimizer: optax.GradientTransformation,
    *,
    key: Any,
    eta: Any = None,
    gamma: Any = 0.55,
    schedule: Schedule | None = None,
    clip_norm: Any = None,
    clip_per_leaf: bool = False,
    draw: Draw = "auto",
) -> optax.GradientTransformation:
  """Chains clip -> noise -> ``optimizer``, the order of Neelakantan et al. (2015), sec. 2.

  Args:
    optimizer: any optax transformation (``optax.sgd(0.1)``, ``optax.adam(1e-3)``, ...).
    key, eta, gamma, schedule, draw: as :func:`add_gradient_noise`.
    clip_norm: clipping threshold (may be traced; ``inf`` or None for no clipping).
    clip_per_leaf: clip each leaf (weight matrix) to ``clip_norm`` separately, as the
      memory-network reference does, instead of the global norm of all gradients.
  """
  _check_non_negative("clip_norm", clip_norm)
  parts = []
  if clip_norm is not None:
    parts.append(clip_by_leaf_norm(clip_norm) if clip_per_leaf
                 else optax.clip_by_global_norm(clip_norm))
  parts.append(add_gradient_noise(eta, gamma, key=key, schedule=schedule, draw=draw))
  parts.append(optimizer)
  return optax.chain(*parts)


def clip_by_leaf_norm(max_norm: Any) -> optax.GradientTransformation:
  """Scales each leaf so that its L2 norm is at most ``max_norm`` (may be traced or inf).

  The memory-network reference (Sukhbaatar et al. 2015) clips every weight matrix's
  gradient to norm 40 separately.
  """
  _check_non_negative("max_norm", max_norm)

  def update_fn(updates, state, params=None):
    del params

    def clip(g):
      if not _is_noisy_leaf(g):
        return g
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      scale = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
      return (g * scale).astype(g.dtype)

    return jax.tree.map(clip, updates, is_leaf=lambda x: x is None), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
