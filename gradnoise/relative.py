"""Relative gradient noise (per-leaf std proportional to a norm) as an optax transformation.

Each inexact leaf (weight matrix, bias vector, ...) gets Gaussian noise whose std is
proportional to the root mean square of a reference of that leaf: at update t, for a leaf
g of n elements,

    g <- g + s * xi_t,    s = sigma * ||ref|| / sqrt(n),    xi_t ~ N(0, I),

with ref = g itself (``relative_to="gradient"``) or the leaf's parameters
(``relative_to="params"``). Then E||s xi_t||^2 = sigma^2 ||ref||^2: sigma is the ratio of
the leaf's noise norm to its reference norm (in mean square), whatever the leaf's size or
scale, and each element's noise has std sigma times the reference's RMS. This kind is
defined by gradnoise (issue 16), after the paper's remark that the effect of a fixed noise
scale "is washed away when gradients become too large" (Neelakantan et al. 2015,
arXiv:1511.06807, sec. 2): here the noise scales with the gradient (or the weights) instead.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradnoise._family import add_where, check_draw, split_leaves, unit_noise_at
from gradnoise.noise import (Draw, _as_float, _check_real_scalar, _norm_parts,
                             _working_dtype, as_key)

RelativeTo = Literal["gradient", "params"]


class RelativeNoiseState(NamedTuple):
  """State of :func:`add_relative_noise`.

  Attributes:
    count: number of updates applied so far (the ``t`` of the next update), int32.
    rng_key: the noise key (typed key array); constant over training.
  """

  count: jax.Array
  rng_key: jax.Array


def _rms(ref: Any, dtype: np.dtype) -> jax.Array:
  """||ref|| / sqrt(max(size, 1)) in ``dtype``, moduli for complex, without overflow."""
  ref = jnp.asarray(ref)
  r, c = _norm_parts([ref], dtype)
  # r / c is the norm; dividing r by sqrt(size) first keeps the quotient <= max |ref|.
  return (r / np.sqrt(max(ref.size, 1)).astype(dtype)) / c


def add_relative_noise(
    sigma: Any,
    key: Any,
    *,
    relative_to: RelativeTo = "gradient",
    draw: Draw = "auto",
) -> optax.GradientTransformation:
  """Adds N(0, s_leaf^2) to each inexact leaf, s_leaf = sigma * ||ref_leaf|| / sqrt(n_leaf).

  ref_leaf is the leaf's update (gradient) or, with ``relative_to="params"``, its
  parameters, and n_leaf its number of elements; the unit noise xi_t is the one
  :func:`gradnoise.add_gradient_noise` would draw at update t with the same key and
  ``draw`` (a pure function of (key, t)), of the leaf's shape. The norm (moduli for complex
  leaves), s_leaf and the sum are computed in the leaf's working dtype (float32, float64
  for float64 and complex128 leaves) without overflow, then cast to the leaf's dtype.
  A leaf with s_leaf = 0 (sigma = 0, or a zero reference: a zero-initialised bias under
  ``"params"``) or a NaN reference is returned bit for bit; integer, bool and None leaves
  pass through. Place it after clipping and before the optimizer::

      optax.chain(clip_by_global_norm(10.0),
                  add_relative_noise(0.1, key=jax.random.key(0), relative_to="params"),
                  optax.sgd(0.1))

  Args:
    sigma: ratio >= 0 of each leaf's noise norm to its reference norm (in mean square), a
      real scalar of any dtype or traced (no recompilation when it changes, vmappable).
    key: a JAX PRNG key or an integer seed.
    relative_to: ``"gradient"`` (default): each leaf's std follows its own update's norm;
      ``"params"``: its parameters' norm, which needs ``update(updates, state, params)``.
    draw: ``"auto"``, ``"fused"`` or ``"per_leaf"``, as :func:`gradnoise.add_gradient_noise`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`RelativeNoiseState`.

  Raises:
    ValueError: for a non-real, non-scalar, concrete negative or NaN ``sigma``, an invalid
      key, ``draw`` or ``relative_to``; from ``update``, when ``relative_to="params"`` and
      no params are given.

  References:
    Neelakantan et al., `Adding Gradient Noise Improves Learning for Very Deep Networks
    <https://arxiv.org/abs/1511.06807>`_, 2015 (sec. 2; the motivation, not this formula)
  """
  _check_real_scalar("sigma", sigma)
  check_draw(draw)
  if relative_to not in ("gradient", "params"):
    raise ValueError(f"relative_to must be 'gradient' or 'params', got {relative_to!r}.")
  sigma = _as_float(sigma)
  rng_key = as_key(key)

  def init_fn(params: optax.Params) -> RelativeNoiseState:
    del params
    return RelativeNoiseState(count=jnp.zeros([], jnp.int32), rng_key=rng_key)

  def update_fn(updates, state, params=None):
    leaves, treedef, inexact = split_leaves(updates)
    if relative_to == "params":
      if params is None:
        raise ValueError("add_relative_noise(relative_to='params') needs the parameters: "
                         "call update(updates, state, params).")
      references = treedef.flatten_up_to(params)
    else:
      references = leaves
    if any(inexact):
      xi = unit_noise_at(state.rng_key, state.count, leaves, inexact, draw)

      def add(x, ref, u):
        real = _working_dtype(jnp.result_type(x))
        std = sigma.astype(real) * _rms(ref, real)
        return add_where(x, std * u, std > 0)

      leaves = [add(x, ref, u) if n else x
                for x, n, ref, u in zip(leaves, inexact, references, xi)]
    new_state = RelativeNoiseState(count=optax.safe_int32_increment(state.count),
                                   rng_key=state.rng_key)
    return jax.tree.unflatten(treedef, leaves), new_state

  return optax.GradientTransformation(init_fn, update_fn)
