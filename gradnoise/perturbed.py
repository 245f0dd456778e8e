"""Perturbed gradient descent (Jin et al. 2017) as an optax transformation.

Jin, Ge, Netrapalli, Kakade & Jordan (2017), "How to Escape Saddle Points Efficiently",
arXiv:1703.00887, Algorithm 2: gradient descent that, when the gradient is small and it has
not perturbed for a while, adds a perturbation drawn uniformly from a ball:

    if ||g_t|| <= g_thres and t - t_noise > k:    g_t <- g_t + xi_t,  t_noise <- t,
    xi_t ~ Uniform(B_0(r)) in R^d,

with t the update index (t = 0 for the first), t_noise the index of the last perturbation
(none at the start, so the first one may come at t = 0), k the number of updates after a
perturbation during which no other may happen, ||g_t|| the global L2 norm of all inexact
leaves and d their total number of real coordinates (twice the size of a complex leaf).
A uniform draw from the ball is xi = r U^(1/d) z / ||z||, z ~ N(0, I_d), U ~ Uniform(0, 1):
z / ||z|| is uniform on the sphere and P(||xi|| <= s r) = s^d.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradnoise._family import check_draw, split_leaves
from gradnoise.noise import (Draw, _as_float, _check_real_scalar, _norm_parts, _unit_noise,
                             _working_dtype, as_key)


class PerturbationState(NamedTuple):
  """State of :func:`add_pgd_perturbation`.

  Attributes:
    count: number of updates applied so far (the ``t`` of the next update), int32.
    rng_key: the noise key (typed key array); constant over training.
    last_perturbation: the update index t_noise of the last perturbation, -1 if none yet,
      int32.
  """

  count: jax.Array
  rng_key: jax.Array
  last_perturbation: jax.Array


def _check_wait(wait: Any) -> int:
  """``wait`` as a Python int >= 0, or a ValueError (it is static: a compile axis)."""
  if isinstance(wait, (bool, np.bool_)):
    raise ValueError(f"wait must be an int >= 0, got {wait!r}.")
  try:
    wait = operator.index(wait)
  except TypeError:
    raise ValueError(f"wait must be an int >= 0 (static, not traced), got {wait!r}.") from None
  if wait < 0:
    raise ValueError(f"wait must be an int >= 0, got {wait!r}.")
  return wait


def add_pgd_perturbation(
    radius: Any,
    grad_threshold: Any,
    wait: int,
    key: Any,
    *,
    draw: Draw = "auto",
) -> optax.GradientTransformation:
  """Adds a perturbation uniform in a ball when the gradient is small (PGD, Jin et al. 2017).

  At update t, if ||g|| <= g_thres and no perturbation happened in the last ``wait``
  updates (t - t_noise > wait), adds xi ~ Uniform(ball of radius r) and sets t_noise = t.
  The ball is over the whole update vector (all inexact leaves together, d real
  coordinates): xi = r U^(1/d) z / ||z||, z the unit noise
  :func:`gradnoise.add_gradient_noise` would draw from ``fold_in(fold_in(key, t), 0)``
  (complex parts rescaled to variance 1) and U ~ Uniform(0, 1) drawn from
  ``fold_in(fold_in(key, t), 1)``, so the perturbation of update t is a pure function of
  (key, t). Norms and the radius are computed in float32 (float64 if any leaf is float64
  or complex128), the sum in each leaf's working dtype, then cast to the leaf's dtype.
  Updates that are not perturbed, all of them when r = 0, are returned bit for bit
  (the draw sits in a ``lax.cond``: only perturbed updates pay for it, except under
  ``vmap``); integer, bool and None leaves pass through.

  Placement. Before ``optax.sgd(lr)`` (after clipping, if any), the threshold applies to
  the gradient and the parameters move by -lr (g + xi): a parameter perturbation of radius
  lr * r, so Jin et al.'s radius r_J is ``radius = r_J / lr``::

      optax.chain(add_pgd_perturbation(radius=0.1 / lr, grad_threshold=1e-3, wait=50,
                                       key=jax.random.key(0)),
                  optax.sgd(lr))

  After ``optax.sgd(lr)`` the perturbation is added to the parameter step itself (radius
  r) and the threshold applies to the step's norm lr ||g|| (give ``lr * g_thres``). Either
  way, unlike Algorithm 2, the gradient of the perturbed update is the unperturbed point's
  (the next update's gradient is taken at the perturbed point), and there is no stopping
  test.

  Args:
    radius: r >= 0, a real scalar of any dtype or traced (no recompilation when it
      changes, vmappable).
    grad_threshold: g_thres >= 0 (inf: whenever ``wait`` allows), as ``radius``. The test
      is ||g|| <= g_thres; a NaN norm never perturbs.
    wait: k, a Python int >= 0 (static; with ``optax.inject_hyperparams`` name it in
      ``static_args``): after a perturbation at t_noise the next may come at
      t_noise + k + 1 at the earliest. 0 allows one at every update.
    key: a JAX PRNG key or an integer seed.
    draw: ``"auto"``, ``"fused"`` or ``"per_leaf"``, as :func:`gradnoise.add_gradient_noise`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`PerturbationState`.

  Raises:
    ValueError: for a non-real, non-scalar, concrete negative or NaN ``radius`` or
      ``grad_threshold``, a ``wait`` that is not an int >= 0, an invalid key or ``draw``.

  References:
    Jin et al., `How to Escape Saddle Points Efficiently
    <https://arxiv.org/abs/1703.00887>`_, ICML 2017
  """
  _check_real_scalar("radius", radius)
  _check_real_scalar("grad_threshold", grad_threshold)
  wait = _check_wait(wait)
  check_draw(draw)
  radius, grad_threshold = _as_float(radius), _as_float(grad_threshold)
  rng_key = as_key(key)

  def init_fn(params: optax.Params) -> PerturbationState:
    del params
    return PerturbationState(count=jnp.zeros([], jnp.int32), rng_key=rng_key,
                             last_perturbation=jnp.full([], -1, jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef, inexact = split_leaves(updates)
    t, last = state.count, state.last_perturbation
    floats = [jnp.asarray(x) for x, n in zip(leaves, inexact) if n]
    if floats:
      dtype = functools.reduce(jnp.promote_types, [_working_dtype(x.dtype) for x in floats])
      norm_r, norm_c = _norm_parts(floats, dtype)
      fire = ((norm_r <= grad_threshold.astype(dtype) * norm_c)
              & ((last < 0) | (t - last > wait)) & (radius > 0))

      def perturb() -> list[jax.Array]:
        step_key = jax.random.fold_in(state.rng_key, t)
        z = [u * np.sqrt(2).astype(u.real.dtype) if jnp.iscomplexobj(u) else u
             for u in _unit_noise(jax.random.fold_in(step_key, 0), leaves, inexact, draw)
             if u is not None]
        z_r, z_c = _norm_parts(z, dtype)
        d = max(sum(u.size * (2 if jnp.iscomplexobj(u) else 1) for u in z), 1)
        uniform = jax.random.uniform(jax.random.fold_in(step_key, 1), (), dtype)
        scale = radius.astype(dtype) * uniform ** (1 / d) * z_c / z_r
        return [(x.astype(u.dtype) + scale.astype(u.real.dtype) * u).astype(x.dtype)
                for x, u in zip(floats, z)]

      perturbed = iter(jax.lax.cond(fire, perturb, lambda: floats))
      leaves = [next(perturbed) if n else x for x, n in zip(leaves, inexact)]
      last = jnp.where(fire, t, last)
    new_state = PerturbationState(count=optax.safe_int32_increment(t),
                                  rng_key=state.rng_key, last_perturbation=last)
    return jax.tree.unflatten(treedef, leaves), new_state

  return optax.GradientTransformation(init_fn, update_fn)
