"""Langevin (SGLD) temperature noise as an optax transformation.

Welling & Teh (2011), "Bayesian Learning via Stochastic Gradient Langevin Dynamics",
ICML, eq. (4): the parameter step of stochastic gradient Langevin dynamics is

    theta_{t+1} = theta_t - lr_t * g_t + N(0, 2 lr_t T),

with g_t the gradient of the loss L and T a temperature (their eq. (4) with step size
eps_t = 2 lr_t and T = 1: for small steps the iterates sample exp(-L(theta) / T)). With
the plain SGD step ``theta_{t+1} = theta_t - lr_t * (g_t + n_t)`` this is gradient noise

    n_t ~ N(0, sigma_t^2),    sigma_t = sqrt(2 T / lr_t),

since lr_t^2 sigma_t^2 = 2 lr_t T. The transform is :func:`gradnoise.add_gradient_noise`
with that std schedule, so it shares its contract (state, dtypes, randomness, bit-exact
pass-through at T = 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gradnoise.noise import Draw, Schedule, _as_float, _check_real_scalar, add_gradient_noise


def langevin_std(learning_rate: Any | Schedule, temperature: Any) -> Schedule:
  """Returns ``t -> sqrt(2 T / lr_t)``, the gradient noise std of SGLD (Welling & Teh 2011).

  The std is 0 where ``T`` = 0 or ``lr_t`` <= 0 (a step of zero length gets no noise:
  2 lr_t T = 0), never inf or NaN.

  Args:
    learning_rate: the SGD learning rate, a real scalar > 0 of any dtype or a traced one,
      or an optax schedule ``count -> lr_t`` (the one given to ``optax.sgd``).
    temperature: T, a real scalar >= 0 of any dtype, or traced.

  Raises:
    ValueError: for a non-real or non-scalar value, a concrete ``learning_rate`` <= 0 or a
      concrete negative ``temperature`` (or NaN).
  """
  _check_real_scalar("temperature", temperature)
  temperature = _as_float(temperature)
  if callable(learning_rate):
    lr_at = learning_rate
  else:
    _check_real_scalar("learning_rate", learning_rate, positive=True)
    lr = _as_float(learning_rate)

    def lr_at(count: jax.Array) -> jax.Array:
      del count
      return lr

  def schedule(count: jax.Array) -> jax.Array:
    lr = _as_float(lr_at(count))
    on = (temperature > 0) & (lr > 0)
    return jnp.where(on, jnp.sqrt(2 * temperature / jnp.where(on, lr, 1)), 0)

  return schedule


def add_langevin_noise(
    learning_rate: Any | Schedule,
    temperature: Any,
    key: Any,
    *,
    draw: Draw = "auto",
) -> optax.GradientTransformation:
  """Adds SGLD's gradient noise N(0, 2 T / lr_t) to the updates (Welling & Teh 2011).

  The std sigma_t = sqrt(2 T / lr_t) is tied to the learning rate so that the *parameter*
  noise has variance 2 lr_t T per step and coordinate. That holds for plain SGD: place the
  transform right before ``optax.sgd`` with the same learning rate or schedule (and no
  momentum, and nothing that rescales the updates in between)::

      lr = optax.exponential_decay(0.1, 1000, 0.5)
      optax.chain(clip_by_global_norm(10.0),
                  add_langevin_noise(lr, temperature=1e-4, key=jax.random.key(0)),
                  optax.sgd(lr))

  Before another optimizer the noise is Gaussian gradient noise of std sigma_t, without
  the 2 lr T guarantee. The stationary distribution for small steps is proportional to
  exp(-L / T), L the loss the gradient belongs to; for L a mean over N examples, T = 1 / N
  samples the Bayesian posterior.

  Shapes and dtypes: as :func:`gradnoise.add_gradient_noise` (noise of each inexact leaf's
  shape, sampled in float32, float64 for float64 leaves; integer, bool and None leaves pass
  through; with T = 0 the updates are returned bit for bit). The noise of update t is the
  unit noise of ``add_gradient_noise`` for the same key, times sigma_t.

  Args:
    learning_rate: lr_t, a real scalar > 0 (any dtype, or traced) or an optax schedule of
      the update count, the same as the optimizer's.
    temperature: T >= 0, a real scalar of any dtype or traced (no recompilation when it
      changes, vmappable).
    key: a JAX PRNG key or an integer seed.
    draw: ``"auto"``, ``"fused"`` or ``"per_leaf"``, as :func:`gradnoise.add_gradient_noise`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`gradnoise.GradientNoiseState`; its ``std`` is sigma_t of the last update.

  Raises:
    ValueError: as :func:`langevin_std`, or for an invalid key or ``draw``.

  References:
    Welling & Teh, `Bayesian Learning via Stochastic Gradient Langevin Dynamics
    <https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf>`_, ICML 2011
  """
  return add_gradient_noise(schedule=langevin_std(learning_rate, temperature), key=key,
                            draw=draw)
