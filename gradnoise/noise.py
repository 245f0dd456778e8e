"""Annealed Gaussian gradient noise as an optax transformation.

Neelakantan et al. (2015), "Adding Gradient Noise Improves Learning for Very Deep
Networks", arXiv:1511.06807, eq. (1)-(2): at update t (t = 0 for the first update)

    g_t <- g_t + N(0, sigma_t^2),    sigma_t^2 = eta / (1 + t)^gamma.

Dtypes. Each inexact leaf has a working dtype: float64 for float64 and complex128 leaves,
float32 for all others (float32, bfloat16, float16, complex64). Its normals are sampled,
added and (for clipping) its norm computed in that dtype, then the result is cast back to
the leaf's dtype. A complex leaf gets ``sigma_t * (x + i y) / sqrt(2)`` with x, y
independent N(0, 1): each part has variance sigma_t^2 / 2 and E|noise|^2 = sigma_t^2, the
convention of ``jax.random.normal`` for complex dtypes, which ``optax.add_noise`` uses.

Randomness. The noise of update ``t`` is a pure function of ``(rng_key, t, tree structure)``.
Leaf i takes n_i normals of its working dtype (n_i = its size; twice its size for a complex
leaf, real parts first), shaped ``leaf.shape`` (``(2,) + leaf.shape`` for complex):

    step_key = fold_in(rng_key, t)
    fused draw:    z32 = normal(step_key, (sum of n_i over float32 leaves,), float32),
                   z64 = normal(fold_in(step_key, 1), (sum over float64 leaves,), float64),
                   each split in tree-flatten order and reshaped to its leaves
    per-leaf draw: z_i = normal(fold_in(step_key, i), shape_i, dtype_i),
                   i = the leaf's index in the flattened tree

The key never changes in the state, so a run restored from a checkpoint at update ``t``
draws exactly the noise it would have drawn without the interruption.
"""

from __future__ import annotations

import functools
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
    rng_key: the noise key (typed key array); constant over training. Named as
      ``optax.add_noise``'s, so ``optax.tree_utils.tree_get(state, "rng_key")`` finds it.
    std: the standard deviation sigma_t used by the last update (0 before the first),
      float32.
  """

  count: jax.Array
  rng_key: jax.Array
  std: jax.Array


def _is_tracer(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_real_scalar(name: str, value: Any, *, positive: bool = False) -> None:
  """Raises ValueError unless ``value`` is a real scalar >= 0 (> 0 with ``positive``).

  Any integer or floating dtype passes the type check (bfloat16, float16, float64; Python
  and NumPy scalars, 0-d NumPy or JAX arrays). The sign and NaN check applies to concrete
  values only; traced values are checked for dtype and shape.
  """
  if _is_tracer(value):
    dtype, shape = value.dtype, value.shape
  else:
    arr = np.asarray(value)
    dtype, shape = arr.dtype, arr.shape
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise ValueError(f"{name} must be a real number, got {value!r}.")
  if shape != ():
    raise ValueError(f"{name} must be a scalar, got shape {shape}.")
  if _is_tracer(value):
    return
  x = float(arr)
  if not (x > 0 if positive else x >= 0):  # also False for NaN
    raise ValueError(f"{name} must be {'>' if positive else '>='} 0, got {value!r}.")


def _as_float(x: Any) -> jax.Array:
  """``x`` as an array of at least float32 (bf16/f16/int -> float32, float64 kept)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _working_dtype(dtype: Any) -> np.dtype:
  """float64 for float64/complex128 leaves, float32 for other inexact leaves (real)."""
  bits = jnp.finfo(dtype).bits  # of the real part for complex dtypes
  return np.dtype(jnp.float64) if bits >= 64 else np.dtype(jnp.float32)


def _is_inexact_leaf(leaf: Any) -> bool:
  return leaf is not None and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def annealed_std(eta: Any, gamma: Any = 0.55) -> Schedule:
  """Returns ``t -> sqrt(eta / (1 + t)^gamma)`` (Neelakantan et al. 2015, eq. 2).

  ``eta`` is the variance at the first update (t = 0) and ``gamma`` the decay exponent:
  real scalars >= 0 of any dtype, or traced. They are promoted to at least float32 before
  the arithmetic, which is otherwise ``optax.add_noise``'s, so both give the same sigma_t.

  Raises:
    ValueError: for a non-real or non-scalar value, or a concrete negative or NaN one.
  """
  _check_real_scalar("eta", eta)
  _check_real_scalar("gamma", gamma)
  eta, gamma = _as_float(eta), _as_float(gamma)

  def schedule(count: jax.Array) -> jax.Array:
    return jnp.sqrt(eta / (count + 1) ** gamma)

  return schedule


def constant_std(std: Any) -> Schedule:
  """Returns ``t -> std``: fixed noise (the paper's std 0.001 for memory networks).

  Raises:
    ValueError: for a non-real or non-scalar ``std``, or a concrete negative or NaN one.
  """
  _check_real_scalar("std", std)
  std = _as_float(std)

  def schedule(count: jax.Array) -> jax.Array:
    del count
    return std

  return schedule


def as_key(key: Any, name: str = "key") -> jax.Array:
  """Returns ``key`` as a typed PRNG key array, or raises a ValueError.

  Accepts typed keys (``jax.random.key``), raw uint32 keys (``jax.random.PRNGKey``) and,
  as ``optax.add_noise``, integer seeds s (Python or NumPy ints, integer 0-d arrays, traced
  or not), which give ``jax.random.key(s)``.
  """
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.key(key)
  if isinstance(key, (jax.Array, np.ndarray)):
    dtype = key.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      return key
    default_shape = jax.random.key_data(jax.random.key(0)).shape
    if dtype == jnp.uint32 and tuple(key.shape[-len(default_shape):]) == default_shape:
      return jax.random.wrap_key_data(key)
    if jnp.issubdtype(dtype, jnp.integer) and key.shape == ():
      return jax.random.key(key)
  raise ValueError(
      f"{name} must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)) "
      f"or an integer seed, got {type(key).__name__}"
      + (f" with dtype {key.dtype} and shape {key.shape}" if hasattr(key, "dtype") else "")
      + ".")


def _unit_noise(step_key: jax.Array, leaves: list, noisy: list[bool],
                draw: Draw) -> list:
  """Unit-variance noise for the noisy leaves (None elsewhere); see the module doc.

  Each array has its leaf's shape and working dtype (complex for complex leaves).
  """
  dtypes = [jnp.result_type(x) if n else None for x, n in zip(leaves, noisy)]
  shapes = [((2,) if jnp.issubdtype(d, jnp.complexfloating) else ()) + jnp.shape(x)
            if n else None for x, n, d in zip(leaves, noisy, dtypes)]
  work = [_working_dtype(d) if n else None for n, d in zip(noisy, dtypes)]
  sizes = [math.prod(s) if n else 0 for s, n in zip(shapes, noisy)]
  if draw == "auto":
    draw = "fused" if sum(sizes) <= FUSED_DRAW_MAX_ELEMENTS else "per_leaf"
  if draw == "per_leaf":
    z = [jax.random.normal(jax.random.fold_in(step_key, i), s, w) if n else None
         for i, (s, w, n) in enumerate(zip(shapes, work, noisy))]
  else:
    z = [None] * len(leaves)
    for stream, dtype in enumerate([np.dtype(jnp.float32), np.dtype(jnp.float64)]):
      members = [i for i, (w, n) in enumerate(zip(work, noisy)) if n and w == dtype]
      if not members:
        continue
      key = jax.random.fold_in(step_key, stream) if stream else step_key
      flat = jax.random.normal(key, (sum(sizes[i] for i in members),), dtype)
      offset = 0
      for i in members:
        z[i] = flat[offset:offset + sizes[i]].reshape(shapes[i])
        offset += sizes[i]
  return [
      jax.lax.complex(zi[0], zi[1]) * np.sqrt(0.5).astype(zi.dtype)
      if zi is not None and jnp.issubdtype(d, jnp.complexfloating) else zi
      for zi, d in zip(z, dtypes)
  ]


def add_gradient_noise(
    eta: Any = None,
    gamma: Any = 0.55,
    key: Any = None,
    *,
    schedule: Schedule | None = None,
    draw: Draw = "auto",
) -> optax.GradientTransformation:
  """Adds N(0, sigma_t^2) to every floating-point and complex leaf of the updates.

  Neelakantan et al. (2015): sigma_t^2 = eta / (1 + t)^gamma, with t the number of
  earlier updates, so the first update has variance ``eta`` (as ``optax.add_noise``, whose
  positional call ``add_gradient_noise(eta, gamma, key_or_seed)`` also works). Place it
  after clipping and before the optimizer::

      optax.chain(clip_by_global_norm(10.0),
                  add_gradient_noise(eta=0.01, key=jax.random.key(0)),
                  optax.sgd(0.1))

  Noise is sampled and added in the leaf's working dtype (float64 for float64/complex128
  leaves, float32 otherwise; see the module doc), then cast to the leaf's dtype; integer,
  bool and None leaves pass through untouched. With sigma_t = 0 (eta = 0) the updates are
  returned unchanged, bit for bit.

  Args:
    eta: base variance, a real scalar >= 0 of any dtype (bf16 included) or a traced one,
      so sweeping it under ``jit`` or ``vmap`` does not recompile. Give either ``eta`` or
      ``schedule``.
    gamma: annealing exponent (>= 0), as ``eta``; the paper uses 0.55.
    key: a JAX PRNG key or an integer seed (required). Different keys give independent
      noise.
    schedule: instead of eta/gamma, any callable ``count -> std`` (e.g.
      :func:`constant_std`, or an optax schedule wrapped to return a std).
    draw: how the normals are generated (see module doc). ``"fused"``: one draw per
      update and working dtype for the whole tree, fastest for small models but not
      shard-local; ``"per_leaf"``: one draw per leaf, shard-local when parameters are
      sharded; ``"auto"`` (default): fused up to ``FUSED_DRAW_MAX_ELEMENTS`` elements.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`GradientNoiseState`.

  Raises:
    ValueError: for a missing or invalid key, both or neither of eta and schedule, an
      invalid eta/gamma (see :func:`annealed_std`) or an unknown ``draw``.
  """
  if (eta is None) == (schedule is None):
    raise ValueError("Give exactly one of eta (annealed noise) or schedule, "
                     f"got eta={eta!r} and schedule={schedule!r}.")
  if draw not in ("auto", "fused", "per_leaf"):
    raise ValueError(f"draw must be 'auto', 'fused' or 'per_leaf', got {draw!r}.")
  if key is None:
    raise ValueError("key is required: a JAX PRNG key (jax.random.key(seed)) or an "
                     "integer seed.")
  if schedule is None:
    schedule = annealed_std(eta, gamma)
  elif not callable(schedule):
    raise ValueError(f"schedule must be a callable count -> std, got {schedule!r}.")
  rng_key = as_key(key)

  def init_fn(params: optax.Params) -> GradientNoiseState:
    del params
    return GradientNoiseState(count=jnp.zeros([], jnp.int32), rng_key=rng_key,
                              std=jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    std = _as_float(schedule(state.count))
    leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
    noisy = [_is_inexact_leaf(x) for x in leaves]

    if any(noisy):
      step_key = jax.random.fold_in(state.rng_key, state.count)
      units = _unit_noise(step_key, leaves, noisy, draw)

      def add(x, u):
        x = jnp.asarray(x)
        real = _working_dtype(x.dtype)
        noised = (x.astype(u.dtype) + std.astype(real) * u).astype(x.dtype)
        # With std == 0 the updates pass unchanged, bit for bit (g + 0 * z turns -0.0
        # into +0.0).
        return jnp.where(std > 0, noised, x)

      leaves = [add(x, u) if n else x for x, n, u in zip(leaves, noisy, units)]
    new_state = GradientNoiseState(count=optax.safe_int32_increment(state.count),
                                   rng_key=state.rng_key, std=std.astype(jnp.float32))
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
    clip_norm: clipping threshold > 0 (real scalar of any dtype, may be traced or inf);
      None for no clipping. Clips with :func:`clip_by_global_norm`, or
      :func:`clip_by_leaf_norm` with ``clip_per_leaf``.
    clip_per_leaf: clip each leaf (weight matrix) to ``clip_norm`` separately, as the
      memory-network reference does, instead of the global norm of all gradients.

  Raises:
    ValueError: for a concrete ``clip_norm`` <= 0 or NaN, and as
      :func:`add_gradient_noise`.
  """
  parts = []
  if clip_norm is not None:
    _check_real_scalar("clip_norm", clip_norm, positive=True)
    parts.append(clip_by_leaf_norm(clip_norm) if clip_per_leaf
                 else clip_by_global_norm(clip_norm))
  parts.append(add_gradient_noise(eta, gamma, key, schedule=schedule, draw=draw))
  parts.append(optimizer)
  return optax.chain(*parts)


def _norm_parts(leaves: list[jax.Array], dtype: Any) -> tuple[jax.Array, jax.Array]:
  """``(r, c)`` with ``r / c = sqrt(sum |x|^2)`` over all elements of ``leaves``, in ``dtype``.

  Usually c = 1 and r the plain root of the sum of squares s, as in
  ``optax.clip_by_global_norm``. When s overflows, or is below size * tiny / eps (where
  squares lost to underflow could matter), r = sqrt(sum (c x)^2) is recomputed with
  c = 2^-k or 2^k, k = 5/8 of the exponent range (80 for float32, 640 for float64): every
  finite input of up to 2^32 elements then gets a finite, accurate r, even when the norm
  itself exceeds the dtype's range. The rescaled pass sits in a ``lax.cond``, so only the
  rare case pays for it (``vmap`` evaluates both branches). Complex leaves count real and
  imaginary parts (|z|^2 = re^2 + im^2). r is inf if an entry is inf, NaN if one is NaN.
  """
  parts = []
  for x in leaves:
    parts += [p.astype(dtype) for p in ((x.real, x.imag) if jnp.iscomplexobj(x) else (x,))]
  fi = jnp.finfo(dtype)
  sumsq = sum(jnp.sum(jnp.square(p)) for p in parts)
  smallest = sum(p.size for p in parts) * float(fi.tiny) / float(fi.eps)

  def rescaled():
    k = 2.0 ** (5 * fi.maxexp // 8)
    c = jnp.where(sumsq <= fi.max, k, 1 / k).astype(dtype)  # NaN sums go the 1/k way
    # The barrier keeps XLA from rewriting (p c)^2 as p^2 c^2, which overflows (c^2 = inf
    # makes a constant-zero leaf NaN).
    scaled = jax.lax.optimization_barrier([p * c for p in parts])
    return jnp.sqrt(sum(jnp.sum(jnp.square(q)) for q in scaled)), c

  in_range = (sumsq >= smallest) & (sumsq <= fi.max)
  return jax.lax.cond(in_range, lambda: (jnp.sqrt(sumsq), jnp.ones([], dtype)), rescaled)


def _clip_factors(r: jax.Array, c: jax.Array, max_norm: Any) -> tuple[jax.Array, jax.Array]:
  """``(c', b)``: clipped x = (x * c') * b for the norm r / c (:func:`_norm_parts`).

  Where ``r / c > max_norm``: c' = c and b = max_norm / r, so no intermediate overflows;
  otherwise c' = b = 1 (x unchanged, bit for bit). A traced ``max_norm`` <= 0 clips to 0
  (never NaN); a NaN one does not clip.
  """
  max_norm = jnp.maximum(_as_float(max_norm), 0).astype(r.dtype)
  clip = r > max_norm * c
  return (jnp.where(clip, c, 1).astype(r.dtype),
          jnp.where(clip, max_norm / jnp.where(r > 0, r, 1), 1).astype(r.dtype))


def _apply_clip(x: jax.Array, factors: tuple[jax.Array, jax.Array]) -> jax.Array:
  """``(x * c) * b`` in ``x``'s working dtype, cast back to ``x.dtype``."""
  c, b = (f.astype(_working_dtype(x.dtype)) for f in factors)
  return ((x * c) * b).astype(x.dtype)


def _clipping(max_norm: Any, norm_parts: Callable[[list[jax.Array]], list[tuple[jax.Array,
               jax.Array]]]) -> optax.GradientTransformation:
  """A stateless clip: ``norm_parts(inexact leaves)`` gives each leaf's ``(r, c)`` (its
  norm is r / c, :func:`_norm_parts`), and a leaf whose norm exceeds ``max_norm`` is scaled
  to it (:func:`_clip_factors`). Integer, bool and None leaves pass through.

  Raises:
    ValueError: for a concrete ``max_norm`` <= 0 or NaN.
  """
  _check_real_scalar("max_norm", max_norm, positive=True)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
    inexact = [i for i, x in enumerate(leaves) if _is_inexact_leaf(x)]
    if not inexact:
      return updates, state
    arrays = [jnp.asarray(leaves[i]) for i in inexact]
    for i, x, parts in zip(inexact, arrays, norm_parts(arrays)):
      leaves[i] = _apply_clip(x, _clip_factors(*parts, max_norm))
    return jax.tree.unflatten(treedef, leaves), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_by_global_norm(max_norm: Any) -> optax.GradientTransformation:
  """Scales all inexact leaves by ``min(1, max_norm / global norm)`` (Pascanu et al. 2013).

  As ``optax.clip_by_global_norm``, but the norm (moduli for complex leaves) is computed
  without overflow (:func:`_norm_parts`, in float64 if any leaf is float64/complex128, else
  float32): float32 gradients with entries of 1e20 are clipped to norm ``max_norm``, not
  zeroed. Integer, bool and None leaves pass through; unclipped updates are returned bit
  for bit.

  Args:
    max_norm: threshold > 0, a real scalar of any dtype, inf, or traced (a traced value
      <= 0 zeroes the updates).

  Raises:
    ValueError: for a concrete ``max_norm`` <= 0 or NaN.
  """
  def shared(arrays):
    dtype = functools.reduce(jnp.promote_types, [_working_dtype(x.dtype) for x in arrays])
    return [_norm_parts(arrays, dtype)] * len(arrays)

  return _clipping(max_norm, shared)


def clip_by_leaf_norm(max_norm: Any) -> optax.GradientTransformation:
  """Scales each inexact leaf so that its L2 norm is at most ``max_norm``.

  The memory-network reference (Sukhbaatar et al. 2015) clips every weight matrix's
  gradient to norm 40 separately. Norms are computed as in :func:`clip_by_global_norm`
  (moduli for complex leaves, without overflow, in the leaf's working dtype).

  Args:
    max_norm: threshold > 0, a real scalar of any dtype, inf, or traced (a traced value
      <= 0 zeroes the updates).

  Raises:
    ValueError: for a concrete ``max_norm`` <= 0 or NaN.
  """
  return _clipping(max_norm, lambda arrays: [_norm_parts([x], _working_dtype(x.dtype))
                                             for x in arrays])
