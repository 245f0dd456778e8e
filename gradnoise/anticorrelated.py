"""Anticorrelated gradient noise (Anti-PGD) as an optax transformation.

Orvieto, Kersting, Proske, Bach & Lucchi (2022), "Anticorrelated Noise Injection for
Improved Generalization", arXiv:2202.02831: Anti-PGD perturbs gradient descent by the
increments of a random walk,

    theta_{t+1} = theta_t - lr * grad L(theta_t) + (xi_{t+1} - xi_t).

Here the increment is added to the gradient: at update t (t = 0 for the first)

    g_t <- g_t + sigma * (xi_t - xi_{t-1}),    xi_s ~ N(0, I) i.i.d.,  xi_{-1} = 0,

so after ``optax.sgd(lr)`` the parameters move by -lr sigma (xi_t - xi_{t-1}): Anti-PGD with
noise scale lr * sigma. Successive perturbations are anticorrelated: per coordinate each has
variance 2 sigma^2 (sigma^2 at t = 0) and two successive ones covariance -sigma^2, a
correlation of -1/2; their sum over updates 0..t is sigma xi_t, of bounded variance.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradnoise._family import add_where, check_draw, split_leaves, unit_noise_at
from gradnoise.noise import Draw, _as_float, _check_real_scalar, _working_dtype, as_key


class AnticorrelatedNoiseState(NamedTuple):
  """State of :func:`add_anticorrelated_noise`.

  Attributes:
    count: number of updates applied so far (the ``t`` of the next update), int32.
    rng_key: the noise key (typed key array); constant over training.
  """

  count: jax.Array
  rng_key: jax.Array


def add_anticorrelated_noise(
    sigma: Any,
    key: Any,
    *,
    draw: Draw = "auto",
) -> optax.GradientTransformation:
  """Adds sigma * (xi_t - xi_{t-1}) to the updates (Anti-PGD, Orvieto et al. 2022).

  xi_t is the unit noise :func:`gradnoise.add_gradient_noise` would draw at update t with
  the same key and ``draw``: one standard normal per element of each inexact leaf, of the
  leaf's shape, sampled in float32 (float64 for float64 and complex128 leaves; complex
  leaves get complex normals with E|xi|^2 = 1), and xi_{-1} = 0. Integer, bool and None
  leaves pass through; with sigma = 0 the updates are returned bit for bit.

  xi_{t-1} is not stored: it is drawn again from ``fold_in(key, t - 1)``, so the noise of
  update t stays a pure function of (key, t), a state rebuilt from the key at count t
  draws the same noise as the uninterrupted run, and the state holds no parameter-sized
  buffer. The cost is a second draw per update (twice the random numbers of
  ``add_gradient_noise``).

  Place it after clipping and before the optimizer::

      optax.chain(clip_by_global_norm(10.0),
                  add_anticorrelated_noise(0.1, key=jax.random.key(0)),
                  optax.sgd(0.1))

  Args:
    sigma: noise scale >= 0, a real scalar of any dtype or traced (no recompilation when it
      changes, vmappable). A sigma changed between updates (``optax.inject_hyperparams``)
      gives sigma_t (xi_t - xi_{t-1}).
    key: a JAX PRNG key or an integer seed.
    draw: ``"auto"``, ``"fused"`` or ``"per_leaf"``, as :func:`gradnoise.add_gradient_noise`.

  Returns:
    An ``optax.GradientTransformation`` whose state is an
    :class:`AnticorrelatedNoiseState`.

  Raises:
    ValueError: for a non-real, non-scalar, concrete negative or NaN ``sigma``, an invalid
      key or ``draw``.

  References:
    Orvieto et al., `Anticorrelated Noise Injection for Improved Generalization
    <https://arxiv.org/abs/2202.02831>`_, ICML 2022
  """
  _check_real_scalar("sigma", sigma)
  check_draw(draw)
  sigma = _as_float(sigma)
  rng_key = as_key(key)

  def init_fn(params: optax.Params) -> AnticorrelatedNoiseState:
    del params
    return AnticorrelatedNoiseState(count=jnp.zeros([], jnp.int32), rng_key=rng_key)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef, inexact = split_leaves(updates)
    if any(inexact):
      t = state.count
      xi = unit_noise_at(state.rng_key, t, leaves, inexact, draw)
      xi_prev = unit_noise_at(state.rng_key, jnp.maximum(t - 1, 0), leaves, inexact, draw)

      def add(x, u, v):
        s = sigma.astype(_working_dtype(jnp.result_type(x)))
        return add_where(x, s * (u - jnp.where(t > 0, v, 0).astype(v.dtype)), sigma > 0)

      leaves = [add(x, u, v) if n else x
                for x, n, u, v in zip(leaves, inexact, xi, xi_prev)]
    new_state = AnticorrelatedNoiseState(count=optax.safe_int32_increment(state.count),
                                         rng_key=state.rng_key)
    return jax.tree.unflatten(treedef, leaves), new_state

  return optax.GradientTransformation(init_fn, update_fn)
