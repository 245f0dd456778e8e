"""The windowed curriculum test shared by NRAM and the Neural GPU.

Both reference trainers judge their curriculum on the training batches: over a window of
``curriculum.window`` steps they sum the errors and the count they are out of (cells for
NRAM, sequences for the Neural GPU), and at the window's end the curriculum advances when
errors < threshold * count. The sums live in the run's extra state (per run, traced).
"""

import jax
import jax.numpy as jnp


def window_start(count_key: str) -> dict[str, jax.Array]:
  """The window's sums at step 0: ``window_steps``, ``window_errors`` and ``count_key``."""
  return {"window_steps": jnp.zeros([], jnp.int32), "window_errors": jnp.zeros([], jnp.float32),
          count_key: jnp.zeros([], jnp.float32)}


def window_step(extra: dict[str, jax.Array], errors: jax.Array, count: jax.Array,
                count_key: str, window: int, threshold: jax.Array
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One step's ``errors`` out of ``count`` added to the window in ``extra``.

  Returns (success, the window's new sums): success is true at the window's last step
  when its count is positive and its errors < ``threshold`` * count; the sums restart at
  zero after every full window, successful or not.
  """
  steps = extra["window_steps"] + 1
  errors = extra["window_errors"] + errors
  count = extra[count_key] + count
  decide = steps >= window
  success = decide & (count > 0) & (errors < threshold * count)
  return success, {"window_steps": jnp.where(decide, 0, steps),
                   "window_errors": jnp.where(decide, 0.0, errors),
                   count_key: jnp.where(decide, 0.0, count)}
