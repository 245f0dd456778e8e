"""Gradient clipping by the spectral norm (largest singular value) of each weight matrix.

The MemN2N reference code (Sukhbaatar et al. 2015, ``MemN2N-babi-matlab/nn/Weight.m``)
clips each weight matrix's gradient G to ``max_grad_norm`` with MATLAB's ``norm(G)``, which
for a matrix is the spectral norm sigma_1(G), not the Frobenius norm of
:func:`gradnoise.clip_by_leaf_norm`.

sigma_1 comes from the Gram matrix A = G^H G of the matrix's smaller side (n x n): s
squarings A^(2^s) with rescaling (``POWER_SQUARINGS``, i.e. 2^s power iterations), then the
Rayleigh quotient of A at A^(2^s)'s largest column. The quotient is accurate to float
rounding unless A's top eigenvalues lie within about 1/2^s of each other, where it
underestimates lambda_1 by at most n / (e 2^(s+1)) (relative; half that for sigma_1).
Only small matmuls: on CPU, for the 160 matrices (225 x 20) of 40 vmapped MemN2N runs,
2.4 ms per step, against 9.1 ms for ``jnp.linalg.norm(G, 2)`` (an SVD) and 6.1 ms for
``eigvalsh`` of the Gram matrix.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gradnoise.noise import _clipping, _norm_parts, _working_dtype

POWER_SQUARINGS = 12  # 4096 power iterations


def _spectral_parts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(r, c)`` with sigma_1(x) = r / c, in x's real working dtype, without overflow.

  x of rank >= 2 is the matrix [prod(shape[:-1]), shape[-1]]; a scalar or vector is a
  1 x n matrix, whose sigma_1 is its L2 norm. c is a power of two that brings the largest
  |entry| near 1, so the Gram matrix neither overflows nor loses the small entries.
  """
  real = _working_dtype(x.dtype)
  if x.ndim < 2:
    return _norm_parts([x], real)
  m = x.reshape(-1, x.shape[-1]).astype(jnp.promote_types(x.dtype, real))
  if m.shape[0] < m.shape[1]:
    m = m.T
  fi = jnp.finfo(real)
  _, exponent = jnp.frexp(jnp.max(jnp.abs(m)))
  c = jnp.ldexp(jnp.ones([], real), -jnp.clip(exponent, 3 - fi.maxexp, fi.maxexp - 2))
  m = m * c
  highest = jax.lax.Precision.HIGHEST
  a = jnp.matmul(jnp.conj(m).T, m, precision=highest)  # [n, n], Hermitian, PSD
  b = a
  for _ in range(POWER_SQUARINGS):
    b = b / jnp.maximum(jnp.max(jnp.abs(b)), fi.tiny)
    b = jnp.matmul(b, b, precision=highest)
  v = b[:, jnp.argmax(jnp.sum(jnp.abs(b) ** 2, 0))]  # has >= 1/n of the top eigenvector
  quotient = jnp.real(jnp.vdot(v, jnp.matmul(a, v, precision=highest)))
  quotient = quotient / jnp.maximum(jnp.real(jnp.vdot(v, v)), fi.tiny)
  return jnp.sqrt(jnp.maximum(quotient, 0)).astype(real), c


def spectral_norm(x: Any) -> jax.Array:
  """sigma_1 of ``x`` ([..., n] read as [prod(...), n]; a vector's L2 norm), float32 or
  float64 as its working dtype (may overflow to inf where the clip itself does not)."""
  r, c = _spectral_parts(jnp.asarray(x))
  return r / c


def clip_by_spectral_norm(max_norm: Any, per_leaf: bool = True) -> optax.GradientTransformation:
  """Scales gradients so that their spectral norm is at most ``max_norm``.

  With ``per_leaf`` (the MemN2N reference) each inexact leaf is clipped by its own sigma_1
  (see :func:`spectral_norm` for leaves that are not matrices). Otherwise all leaves share
  one factor from the spectral norm of the block-diagonal matrix of all of them, the largest
  leaf sigma_1. Integer, bool and None leaves pass through; unclipped updates are returned
  bit for bit.

  Args:
    max_norm: threshold > 0, a real scalar of any dtype, inf, or traced (a traced value
      <= 0 zeroes the updates).

  Raises:
    ValueError: for a concrete ``max_norm`` <= 0 or NaN.
  """
  def parts(arrays):
    each = [_spectral_parts(x) for x in arrays]
    if per_leaf:
      return each
    dtype = functools.reduce(jnp.promote_types, [r.dtype for r, _ in each])
    c = functools.reduce(jnp.minimum, [c.astype(dtype) for _, c in each])
    r = functools.reduce(jnp.maximum, [r.astype(dtype) * (c / ci)
                                       for r, ci in each])  # exact: powers of two
    return [(r, c)] * len(arrays)

  return _clipping(max_norm, parts)
