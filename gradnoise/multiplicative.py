"""Multiplicative gradient noise as an optax transformation.

Each gradient element is scaled by its own random factor: at update t

    g_t <- g_t * (1 + sigma * xi_t),    xi_t ~ N(0, I),

so the noise sigma * g_t * xi_t has mean 0 and std sigma * |g| per element: it is
proportional to the gradient, zero where the gradient is zero, and its noise-to-gradient
ratio is sigma whatever the gradient's scale. No single paper defines this gradient noise;
the factor 1 + sigma * xi is the multiplicative Gaussian noise of Srivastava, Hinton,
Krizhevsky, Sutskever & Salakhutdinov (2014), "Dropout: A Simple Way to Prevent Neural
Networks from Overfitting", JMLR 15, sec. 10 (there applied to activations, with
sigma^2 = p / (1 - p) for a drop rate p), applied here to the gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradnoise._family import add_where, check_draw, split_leaves, unit_noise_at
from gradnoise.noise import Draw, _as_float, _check_real_scalar, _working_dtype, as_key


class MultiplicativeNoiseState(NamedTuple):
  """State of :func:`add_multiplicative_noise`.

  Attributes:
    count: number of updates applied so far (the ``t`` of the next update), int32.
    rng_key: the noise key (typed key array); constant over training.
  """

  count: jax.Array
  rng_key: jax.Array


def add_multiplicative_noise(
    sigma: Any,
    key: Any,
    *,
    draw: Draw = "auto",
) -> optax.GradientTransformation:
  """Multiplies the updates elementwise by 1 + sigma * xi_t, xi_t ~ N(0, I).

  xi_t is the unit noise :func:`gradnoise.add_gradient_noise` would draw at update t with
  the same key and ``draw`` (a pure function of (key, t)), of each inexact leaf's shape,
  sampled in float32 (float64 for float64 and complex128 leaves; complex leaves get complex
  normals with E|xi|^2 = 1). The result is computed as g + g * (sigma * xi) in that dtype,
  which keeps a small sigma's noise that 1 + sigma * xi would round away, then cast to the
  leaf's dtype. Integer, bool and None leaves pass through; with sigma = 0 the updates are
  returned bit for bit. Place it after clipping and before the optimizer::

      optax.chain(clip_by_global_norm(10.0),
                  add_multiplicative_noise(0.5, key=jax.random.key(0)),
                  optax.sgd(0.1))

  Args:
    sigma: relative noise std >= 0 (the noise-to-gradient ratio per element), a real scalar
      of any dtype or traced (no recompilation when it changes, vmappable).
    key: a JAX PRNG key or an integer seed.
    draw: ``"auto"``, ``"fused"`` or ``"per_leaf"``, as :func:`gradnoise.add_gradient_noise`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`MultiplicativeNoiseState`.

  Raises:
    ValueError: for a non-real, non-scalar, concrete negative or NaN ``sigma``, an invalid
      key or ``draw``.

  References:
    Srivastava et al., `Dropout: A Simple Way to Prevent Neural Networks from Overfitting
    <https://jmlr.org/papers/v15/srivastava14a.html>`_, JMLR 2014 (sec. 10, multiplicative
    Gaussian noise)
  """
  _check_real_scalar("sigma", sigma)
  check_draw(draw)
  sigma = _as_float(sigma)
  rng_key = as_key(key)

  def init_fn(params: optax.Params) -> MultiplicativeNoiseState:
    del params
    return MultiplicativeNoiseState(count=jnp.zeros([], jnp.int32), rng_key=rng_key)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef, inexact = split_leaves(updates)
    if any(inexact):
      xi = unit_noise_at(state.rng_key, state.count, leaves, inexact, draw)

      def multiply(x, u):
        x = jnp.asarray(x)
        s = sigma.astype(_working_dtype(x.dtype))
        return add_where(x, x.astype(u.dtype) * (s * u), sigma > 0)

      leaves = [multiply(x, u) if n else x for x, n, u in zip(leaves, inexact, xi)]
    new_state = MultiplicativeNoiseState(count=optax.safe_int32_increment(state.count),
                                         rng_key=state.rng_key)
    return jax.tree.unflatten(treedef, leaves), new_state

  return optax.GradientTransformation(init_fn, update_fn)
