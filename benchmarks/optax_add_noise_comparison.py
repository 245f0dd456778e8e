"""What really differs between ``optax.add_noise`` and ``gradnoise.add_gradient_noise``.

Measures, with the installed optax, each claim the README makes in "Differences from
optax.add_noise": traced eta under ``jit`` and ``vmap``, ``inject_hyperparams``, schedules,
sampling precision of low-precision leaves, eta = 0, non-float leaves, the state's fields
and whether the noise of update t can be drawn from (key, t) alone. Prints one line per
measurement. Run: ``python benchmarks/optax_add_noise_comparison.py``. Cost per step is
measured separately by ``noise_overhead.py``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

import gradnoise

N = 200_000
KEY = jax.random.key(0)


def first_update(tx, grads):
  return tx.update(grads, tx.init(grads))


def chi2_ok(x, variance, level=0.999):
  """Whether mean(x^2) lies in the chi-square interval of N(0, variance) samples."""
  lo, hi = stats.chi2.ppf([(1 - level) / 2, (1 + level) / 2], df=x.size)
  return bool(variance * lo / x.size < np.mean(np.square(x, dtype=np.float64)) <
              variance * hi / x.size)


def traced_eta_under_jit():
  traces = []

  @jax.jit
  def noise(eta):
    traces.append(1)
    return first_update(optax.add_noise(eta, 0.55, KEY), {"g": jnp.zeros(N)})[0]["g"]

  for eta in (0.01, 0.3):
    x = np.asarray(noise(eta))
    print(f"optax.add_noise, traced eta={eta} under jit: mean(x^2)={np.mean(x**2):.5f}, "
          f"in 99.9% interval: {chi2_ok(x, eta)}")
  print(f"  traces: {len(traces)}, compiled executables: {noise._cache_size()}")


def traced_eta_under_vmap():
  etas = jnp.array([0.0, 0.01, 0.25, 1.0])
  keys = jax.random.split(KEY, 4)

  def one(key, eta):
    return first_update(optax.add_noise(eta, 0.55, key), {"g": jnp.zeros(N)})[0]["g"]

  noise = np.asarray(jax.jit(jax.vmap(one))(keys, etas))
  for eta, x in zip(np.asarray(etas), noise):
    ok = bool(np.all(x == 0)) if eta == 0 else chi2_ok(x, float(eta))
    print(f"optax.add_noise under vmap, eta={eta:.2f}: mean(x^2)={np.mean(x**2):.5f}, "
          f"right variance: {ok}")
  corr = np.corrcoef(noise[1:])
  print(f"  max |correlation| between runs: {np.max(np.abs(corr - np.eye(3))):.4f}")


def inject_hyperparams():
  tx = optax.inject_hyperparams(optax.add_noise)(eta=0.25, gamma=0.0, key=KEY)
  grads = {"g": jnp.zeros(N)}
  update = jax.jit(tx.update)
  state = tx.init(grads)
  x, state = update(grads, state)
  # full_like keeps the stored dtype; a weakly typed jnp.asarray(0.04) would recompile,
  # for gradnoise as for optax.
  state.hyperparams["eta"] = jnp.full_like(state.hyperparams["eta"], 0.04)
  y, state = update(grads, state)
  print(f"optax.add_noise in inject_hyperparams: eta 0.25 -> mean(x^2)={np.mean(x['g']**2):.4f}"
        f" ({chi2_ok(np.asarray(x['g']), 0.25)}), eta 0.04 -> {np.mean(y['g']**2):.4f} "
        f"({chi2_ok(np.asarray(y['g']), 0.04)}), compiled executables: {update._cache_size()}")


def schedules():
  grads = {"g": jnp.zeros(N)}
  fixed = optax.add_noise(0.3**2, 0.0, KEY)  # fixed std 0.3: eta = std^2, gamma = 0
  state = fixed.init(grads)
  for _ in range(3):
    x, state = fixed.update(grads, state)
  print(f"optax.add_noise(eta=0.09, gamma=0) at t=2: mean(x^2)={np.mean(x['g']**2):.4f} "
        f"(fixed std 0.3: {chi2_ok(np.asarray(x['g']), 0.09)})")
  variance = optax.linear_schedule(1.0, 0.0, transition_steps=4)
  tx = optax.inject_hyperparams(optax.add_noise)(eta=variance, gamma=0.0, key=KEY)
  state, seen = tx.init(grads), []
  for t in range(5):
    x, state = tx.update(grads, state)
    seen.append(round(float(np.mean(x["g"] ** 2)), 3))
  print(f"inject_hyperparams(optax.add_noise)(eta=linear_schedule(1, 0, 4), gamma=0): "
        f"mean(x^2) per step {seen}")


def low_precision_sampling():
  for dtype in (jnp.bfloat16, jnp.float16):
    grads = {"g": jnp.zeros(N, dtype)}
    for name, tx in [("optax.add_noise", optax.add_noise(1.0, 0.0, KEY)),
                     ("gradnoise", gradnoise.add_gradient_noise(1.0, 0.0, KEY))]:
      x = np.asarray(first_update(tx, grads)[0]["g"], np.float64)
      print(f"{name}, {jnp.dtype(dtype).name} leaf, std 1: distinct values "
            f"{len(np.unique(x))}, max |x| {np.max(np.abs(x)):.3f}, mean(x^2) "
            f"{np.mean(x**2):.4f}, KS p-value vs N(0,1) {stats.kstest(x, 'norm').pvalue:.2g}")


def eta_zero_and_leaf_types():
  grads = {"g": jnp.array([-0.0, 1.5, -2.0])}
  for name, tx in [("optax.add_noise", optax.add_noise(0.0, 0.55, KEY)),
                   ("gradnoise", gradnoise.add_gradient_noise(0.0, 0.55, KEY))]:
    out = np.asarray(first_update(tx, grads)[0]["g"])
    print(f"{name}, eta=0 on [-0.0, 1.5, -2.0]: {out.tolist()}, sign bit of -0.0 kept: "
          f"{bool(np.signbit(out[0]))}")
  for name, tx in [("optax.add_noise", optax.add_noise(0.1, 0.55, KEY)),
                   ("gradnoise", gradnoise.add_gradient_noise(0.1, 0.55, KEY))]:
    for leaf_name, leaf in [("int32", jnp.arange(3)), ("bool", jnp.array([True, False])),
                            ("None", None)]:
      try:
        out = first_update(tx, {"w": jnp.zeros(2), "x": leaf})[0]["x"]
        result = f"passes through: {out if out is None else np.asarray(out).tolist()}"
      except Exception as e:  # pylint: disable=broad-except  # the point is to report it
        result = f"raises {type(e).__name__}: {str(e).splitlines()[0][:80]}"
      print(f"{name}, {leaf_name} leaf: {result}")


def wide_and_complex_leaves():
  with jax.enable_x64(True):
    grads = {"g": jnp.full(4, 1 + 1e-12, jnp.float64)}
    for name, tx in [("optax.add_noise", optax.add_noise(1e-30, 0.0, KEY)),
                     ("gradnoise", gradnoise.add_gradient_noise(1e-30, 0.0, KEY))]:
      out = first_update(tx, grads)[0]["g"]
      print(f"{name}, float64 1 + 1e-12 plus noise of std 1e-15: dtype {out.dtype}, "
            f"entries equal to 1.0: {int(np.sum(np.asarray(out) == 1.0))} of 4")
  grads = {"g": jnp.zeros(N, jnp.complex64)}
  for name, tx in [("optax.add_noise", optax.add_noise(0.5, 0.0, KEY)),
                   ("gradnoise", gradnoise.add_gradient_noise(0.5, 0.0, KEY))]:
    z = np.asarray(first_update(tx, grads)[0]["g"], np.complex128)
    print(f"{name}, complex64 leaf, variance 0.5: E|z|^2 {np.mean(np.abs(z)**2):.4f}, "
          f"var re {np.var(z.real):.4f}, var im {np.var(z.imag):.4f}")


def state_and_step_addressing():
  grads = {"g": jnp.zeros(4)}
  for name, tx in [("optax.add_noise", optax.add_noise(0.1, 0.55, KEY)),
                   ("gradnoise", gradnoise.add_gradient_noise(0.1, 0.55, KEY))]:
    state = tx.init(grads)
    fields = type(state)._fields
    for _ in range(5):
      _, state = tx.update(grads, state)
    at_5, _ = tx.update(grads, state)
    # A state rebuilt from the initial key and the step number alone.
    rebuilt = tx.init(grads)._replace(count=jnp.asarray(5, jnp.int32))
    again, _ = tx.update(grads, rebuilt)
    key_changed = not np.array_equal(
        jax.random.key_data(optax.tree_utils.tree_get(state, "rng_key")),
        jax.random.key_data(KEY))
    print(f"{name}: state fields {fields}; key changes every update: {key_changed}; noise "
          f"of update 5 from (initial key, count=5) equals the run's: "
          f"{np.array_equal(at_5['g'], again['g'])}")


def main():
  argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
  print(f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0].device_kind}")
  traced_eta_under_jit()
  traced_eta_under_vmap()
  inject_hyperparams()
  schedules()
  low_precision_sampling()
  eta_zero_and_leaf_types()
  wide_and_complex_leaves()
  state_and_step_addressing()


if __name__ == "__main__":
  main()
