"""Leaf-level helpers shared by the noise family (private).

Every transform of the family flattens the updates with ``None`` kept as a leaf, perturbs
only the inexact (floating-point and complex) leaves, draws its unit noise as
:func:`gradnoise.add_gradient_noise` does (``gradnoise.noise._unit_noise``) and adds the
noise in the leaf's working dtype (float64 for float64/complex128 leaves, float32 for the
others) before casting back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradnoise.noise import Draw, _is_inexact_leaf, _unit_noise


def split_leaves(updates: Any) -> tuple[list, Any, list[bool]]:
  """Returns ``(leaves, treedef, inexact)``: the flattened updates (``None`` kept as a
  leaf) and, per leaf, whether it is floating-point or complex (gets noise)."""
  leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
  return leaves, treedef, [_is_inexact_leaf(x) for x in leaves]


def check_draw(draw: Draw) -> None:
  """Raises ValueError unless ``draw`` is one of ``add_gradient_noise``'s draw modes."""
  if draw not in ("auto", "fused", "per_leaf"):
    raise ValueError(f"draw must be 'auto', 'fused' or 'per_leaf', got {draw!r}.")


def unit_noise_at(rng_key: jax.Array, t: jax.Array, leaves: list, inexact: list[bool],
                  draw: Draw) -> list:
  """The unit-variance noise xi_t of ``add_gradient_noise`` at update ``t``.

  A pure function of ``(rng_key, t, tree structure)``: ``_unit_noise(fold_in(rng_key, t))``,
  one array of the leaf's shape and working dtype per inexact leaf, None elsewhere.
  """
  return _unit_noise(jax.random.fold_in(rng_key, t), leaves, inexact, draw)


def add_where(x: Any, noise: jax.Array, active: jax.Array) -> jax.Array:
  """``x + noise`` computed in ``noise``'s dtype and cast to ``x.dtype`` where ``active``;
  ``x`` itself, bit for bit, elsewhere (``x + 0`` would turn -0.0 into +0.0)."""
  x = jnp.asarray(x)
  return jnp.where(active, (x.astype(noise.dtype) + noise).astype(x.dtype), x)
