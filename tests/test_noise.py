"""Behaviour of gradnoise.add_gradient_noise, clip_by_leaf_norm and noisy."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import gradnoise

KEY = jax.random.key(42)
N = 200_000  # samples per statistical check


def noise_at(t, eta=0.01, gamma=0.55, n=N, draw="auto", key=KEY):
  """The noise added at update t to a zero gradient of n elements."""
  tx = gradnoise.add_gradient_noise(eta, gamma, key=key, draw=draw)
  state = tx.init(None)._replace(count=jnp.asarray(t, jnp.int32))
  updates, new_state = tx.update({"g": jnp.zeros(n)}, state)
  return np.asarray(updates["g"], np.float64), new_state


def chi2_variance_interval(variance, n, level=0.999):
  """Interval that n * s^2 / variance falls in with probability ``level`` (mean known 0)."""
  lo, hi = stats.chi2.ppf([(1 - level) / 2, (1 + level) / 2], df=n)
  return variance * lo / n, variance * hi / n


@pytest.mark.parametrize("draw", ["fused", "per_leaf"])
@pytest.mark.parametrize("t", [0, 1, 9, 999])
def test_mean_and_variance_follow_schedule(t, draw):
  eta, gamma = 0.3, 0.55
  x, state = noise_at(t, eta, gamma, draw=draw)
  variance = eta / (1 + t) ** gamma
  # Mean: |mean| < 3.29 standard errors (99.9% two-sided normal interval).
  assert abs(x.mean()) < 3.29 * np.sqrt(variance / N)
  # Variance about the known mean 0: chi-square 99.9% interval with N degrees of freedom.
  lo, hi = chi2_variance_interval(variance, N)
  assert lo < np.mean(x**2) < hi
  np.testing.assert_allclose(float(state.std), np.sqrt(variance), rtol=1e-6)
  assert int(state.count) == t + 1
  # Gaussian shape: Kolmogorov-Smirnov against N(0, variance).
  assert stats.kstest(x / np.sqrt(variance), "norm").pvalue > 1e-3


def test_first_update_has_variance_eta_and_count_advances():
  tx = gradnoise.add_gradient_noise(0.5, 0.55, key=KEY)
  state = tx.init({"g": jnp.zeros(3)})
  assert int(state.count) == 0 and float(state.std) == 0.0
  stds = []
  for _ in range(3):
    _, state = tx.update({"g": jnp.zeros(3)}, state)
    stds.append(float(state.std))
  np.testing.assert_allclose(stds, [np.sqrt(0.5 / (1 + t) ** 0.55) for t in range(3)],
                             rtol=1e-6)


def test_same_schedule_as_optax_add_noise():
  eta, gamma = 0.01, 0.55
  ours = gradnoise.add_gradient_noise(eta, gamma, key=KEY)
  reference = optax.add_noise(eta, gamma, KEY)
  grads = {"g": jnp.zeros(N)}
  s_ours, s_ref = ours.init(grads), reference.init(grads)
  for t in range(4):
    u_ours, s_ours = ours.update(grads, s_ours)
    u_ref, s_ref = reference.update(grads, s_ref)
    std_ref = np.sqrt(eta / (1 + t) ** gamma)
    # Our recorded std is optax's formula, to float32 rounding.
    np.testing.assert_allclose(float(s_ours.std), std_ref, rtol=1e-6)
    # Both empirical variances lie in the same chi-square interval.
    lo, hi = chi2_variance_interval(std_ref**2, N)
    for u in (u_ours, u_ref):
      assert lo < np.mean(np.asarray(u["g"], np.float64) ** 2) < hi


@pytest.mark.parametrize("draw", ["fused", "per_leaf"])
def test_independent_across_leaves_steps_and_keys(draw):
  n = 50_000
  tx = gradnoise.add_gradient_noise(1.0, 0.0, key=KEY, draw=draw)
  grads = {"a": jnp.zeros(n), "b": jnp.zeros(n)}
  state = tx.init(grads)
  u0, state = tx.update(grads, state)
  u1, _ = tx.update(grads, state)
  other = gradnoise.add_gradient_noise(1.0, 0.0, key=jax.random.key(43), draw=draw)
  u_other, _ = other.update(grads, other.init(grads))
  bound = 4.0 / np.sqrt(n)  # |corr| of independent samples: sd 1/sqrt(n)
  pairs = [(u0["a"], u0["b"]), (u0["a"], u1["a"]), (u0["a"], u_other["a"])]
  for x, y in pairs:
    assert abs(np.corrcoef(x, y)[0, 1]) < bound


def test_vmap_over_keys_and_eta():
  n = 20_000
  keys = jax.random.split(KEY, 4)
  etas = jnp.array([0.0, 0.01, 0.25, 1.0])

  def one_run(key, eta):
    tx = gradnoise.add_gradient_noise(eta, 0.55, key=key)
    updates, state = tx.update({"g": jnp.zeros(n)}, tx.init(None))
    return updates["g"], state.std

  noise, stds = jax.jit(jax.vmap(one_run))(keys, etas)
  np.testing.assert_allclose(stds, np.sqrt(etas), rtol=1e-6)
  assert np.all(noise[0] == 0)
  for i in range(1, 4):
    lo, hi = chi2_variance_interval(float(etas[i]), n)
    assert lo < float(jnp.mean(noise[i] ** 2)) < hi
  corr = np.corrcoef(noise[1:])
  assert np.max(np.abs(corr - np.eye(3))) < 4.0 / np.sqrt(n)
  # Run k of the batch equals run k alone.
  alone, _ = one_run(keys[2], etas[2])
  np.testing.assert_allclose(noise[2], alone, rtol=1e-6)


def test_noise_is_pure_function_of_key_and_step():
  grads = {"w": jnp.ones((5, 3)), "b": jnp.ones(3)}
  tx = gradnoise.add_gradient_noise(0.1, key=KEY)
  state = tx.init(grads)
  for _ in range(7):
    expected, state = tx.update(grads, state)
  # A fresh transform restored at count 6 (as from a checkpoint) draws the same noise.
  restored = gradnoise.add_gradient_noise(0.1, key=KEY)
  state6 = restored.init(grads)._replace(count=jnp.asarray(6, jnp.int32))
  again, _ = restored.update(grads, state6)
  jax.tree.map(np.testing.assert_array_equal, expected, again)


def assert_bitwise_equal(tree_a, tree_b):
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
    np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_eta_zero_returns_updates_unchanged():
  grads = {"w": jax.random.normal(KEY, (7, 5)), "b": jnp.array([-0.0, 0.0, 1e-30, -2.5, 3.0]),
           "h": jnp.array([-0.0, 1.5], jnp.bfloat16), "n": jnp.arange(2)}
  tx = gradnoise.add_gradient_noise(0.0, key=KEY)
  updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
  assert_bitwise_equal(updates, grads)


@pytest.mark.parametrize("base", [optax.sgd(0.1), optax.adam(1e-3)])
def test_eta_zero_is_bit_exact_base_optimizer(base):
  # Op by op (no jit): the compiled chain may fuse differently around the transform.
  key = jax.random.key(0)
  params = {"w": jax.random.normal(key, (7, 5)), "b": jnp.zeros(5)}
  grads = {"w": jax.random.normal(jax.random.fold_in(key, 1), (7, 5)),
           "b": jnp.array([-0.0, 0.0, 1e-30, -2.5, 3.0])}
  with_noise = gradnoise.noisy(base, eta=0.0, key=KEY, clip_norm=1.0)
  plain = optax.chain(gradnoise.noise.clip_by_global_norm(1.0), base)
  s1, s2 = with_noise.init(params), plain.init(params)
  for _ in range(3):
    u1, s1 = with_noise.update(grads, s1, params)
    u2, s2 = plain.update(grads, s2, params)
    assert_bitwise_equal(u1, u2)


def test_changing_eta_or_gamma_does_not_recompile():
  traces = []

  @jax.jit
  def step(grads, eta, gamma):
    traces.append(1)
    tx = gradnoise.add_gradient_noise(eta, gamma, key=KEY)
    return tx.update(grads, tx.init(grads))

  grads = {"g": jnp.zeros(10)}
  for eta, gamma in [(0.01, 0.55), (0.3, 0.55), (1.0, 0.1), (0.0, 0.0)]:
    _, state = step(grads, eta, gamma)
    np.testing.assert_allclose(float(state.std), np.sqrt(eta), rtol=1e-6)
  assert len(traces) == 1
  assert step._cache_size() == 1


def test_low_precision_leaves_get_float32_noise_and_ints_pass():
  grads = {"bf16": jnp.zeros(N, jnp.bfloat16), "f16": jnp.zeros(N, jnp.float16),
           "int": jnp.arange(5), "bool": jnp.array([True, False]), "none": None}
  tx = gradnoise.add_gradient_noise(1e-4, 0.0, key=KEY, draw="per_leaf")
  updates, _ = tx.update(grads, tx.init(grads))
  assert updates["bf16"].dtype == jnp.bfloat16 and updates["f16"].dtype == jnp.float16
  assert updates["none"] is None
  np.testing.assert_array_equal(updates["int"], grads["int"])
  np.testing.assert_array_equal(updates["bool"], grads["bool"])
  # The bf16 noise is the float32 draw rounded once: same values as sampling a float32
  # leaf with the same key and position, cast to bf16.
  f32_grads = dict(grads, bf16=jnp.zeros(N, jnp.float32))
  f32_updates, _ = tx.update(f32_grads, tx.init(f32_grads))
  np.testing.assert_array_equal(updates["bf16"], f32_updates["bf16"].astype(jnp.bfloat16))
  lo, hi = chi2_variance_interval(1e-4, N)
  assert lo * 0.99 < float(jnp.mean(updates["bf16"].astype(jnp.float32) ** 2)) < hi * 1.01


def test_constant_and_custom_schedules():
  tx = gradnoise.add_gradient_noise(schedule=gradnoise.constant_std(0.001), key=KEY)
  state = tx.init(None)
  for _ in range(3):
    updates, state = tx.update({"g": jnp.zeros(N)}, state)
  np.testing.assert_allclose(float(state.std), 0.001, rtol=1e-6)
  lo, hi = chi2_variance_interval(1e-6, N)
  assert lo < float(jnp.mean(updates["g"] ** 2)) < hi
  # An optax schedule works as a std schedule.
  sched = optax.linear_schedule(1.0, 0.0, transition_steps=4)
  tx = gradnoise.add_gradient_noise(schedule=sched, key=KEY)
  state = tx.init(None)
  stds = []
  for _ in range(5):
    _, state = tx.update({"g": jnp.zeros(3)}, state)
    stds.append(float(state.std))
  np.testing.assert_allclose(stds, [1.0, 0.75, 0.5, 0.25, 0.0])


def test_masked_adds_noise_only_where_selected():
  grads = {"w": jnp.zeros(1000), "b": jnp.zeros(1000)}
  tx = optax.masked(gradnoise.add_gradient_noise(1.0, key=KEY), {"w": True, "b": False})
  updates, _ = tx.update(grads, tx.init(grads))
  assert float(jnp.std(updates["w"])) > 0.5
  np.testing.assert_array_equal(updates["b"], 0.0)


def test_multisteps_adds_noise_once_per_real_update():
  k = 3
  grads = {"g": jnp.ones(4)}
  inner = gradnoise.add_gradient_noise(0.5, key=KEY)
  multi = optax.MultiSteps(inner, every_k_schedule=k)
  state = multi.init(grads)
  emitted = []
  for _ in range(2 * k):
    updates, state = multi.update(grads, state)
    emitted.append(np.asarray(updates["g"]))
  assert int(state.inner_opt_state.count) == 2  # two real updates, not six
  # Real updates equal the plain transform applied to the averaged grads at t = 0, 1.
  ref_state = inner.init(grads)
  for t in range(2):
    ref, ref_state = inner.update(grads, ref_state)
    np.testing.assert_allclose(emitted[(t + 1) * k - 1], ref["g"], rtol=1e-6)
  for i in [0, 1, 3, 4]:
    np.testing.assert_array_equal(emitted[i], 0.0)


def test_inject_hyperparams():
  tx = optax.inject_hyperparams(gradnoise.add_gradient_noise)(eta=0.25, gamma=0.0, key=KEY)
  grads = {"g": jnp.zeros(N)}
  state = tx.init(grads)
  update = jax.jit(tx.update)
  _, state = update(grads, state)
  np.testing.assert_allclose(float(state.inner_state.std), 0.5, rtol=1e-6)
  state.hyperparams["eta"] = jnp.full_like(state.hyperparams["eta"], 0.04)
  updates, state = update(grads, state)
  np.testing.assert_allclose(float(state.inner_state.std), 0.2, rtol=1e-6)
  lo, hi = chi2_variance_interval(0.04, N)
  assert lo < float(jnp.mean(updates["g"] ** 2)) < hi
  assert update._cache_size() == 1


def test_clip_by_leaf_norm_clips_each_leaf_separately():
  grads = {"a": jnp.array([30.0, 40.0]), "b": jnp.array([3.0, 4.0]), "i": jnp.arange(2)}
  clipped, _ = gradnoise.clip_by_leaf_norm(10.0).update(grads, optax.EmptyState())
  np.testing.assert_allclose(clipped["a"], [6.0, 8.0], rtol=1e-6)
  np.testing.assert_array_equal(clipped["b"], grads["b"])
  np.testing.assert_array_equal(clipped["i"], grads["i"])
  unclipped, _ = gradnoise.clip_by_leaf_norm(jnp.inf).update(grads, optax.EmptyState())
  np.testing.assert_array_equal(unclipped["a"], grads["a"])


def test_noisy_order_is_clip_then_noise_then_optimizer():
  grads = {"g": jnp.array([300.0, 400.0])}
  tx = gradnoise.noisy(optax.sgd(1.0), eta=0.0, key=KEY, clip_norm=5.0)
  updates, state = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(updates["g"], [-3.0, -4.0], rtol=1e-6)
  assert isinstance(state[1], gradnoise.GradientNoiseState)
  per_leaf = gradnoise.noisy(optax.sgd(1.0), eta=0.0, key=KEY, clip_norm=5.0,
                             clip_per_leaf=True)
  assert isinstance(per_leaf.init(grads)[0], optax.EmptyState)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eta=-0.1), "eta must be >= 0"),
    (dict(eta=float("nan")), "eta must be >= 0"),
    (dict(eta=0.1, gamma=-1.0), "gamma must be >= 0"),
    (dict(schedule=None), "exactly one of eta"),
    (dict(eta=0.1, schedule=gradnoise.constant_std(0.1)), "exactly one of eta"),
    (dict(eta=0.1, draw="fast"), "draw must be"),
    (dict(eta=0.1, key=None), "key is required"),
    (dict(eta=0.1, key=1.5), "key must be a JAX PRNG key"),
    (dict(eta=0.1, key=True), "key must be a JAX PRNG key"),
    (dict(eta=0.1, key=np.zeros((), np.float32)), "key must be a JAX PRNG key"),
    (dict(eta=0.1, key=np.zeros(3, np.uint32)), "key must be a JAX PRNG key"),
    (dict(eta=0.1, key=jnp.zeros(2, jnp.float32)), "key must be a JAX PRNG key"),
])
def test_value_errors(kwargs, match):
  kwargs = {"key": KEY, **kwargs}
  with pytest.raises(ValueError, match=match):
    gradnoise.add_gradient_noise(**kwargs)


def test_value_errors_for_std_and_clip():
  with pytest.raises(ValueError, match="std must be >= 0"):
    gradnoise.constant_std(-0.001)
  for bad in [0.0, -1.0, float("nan"), jnp.bfloat16(0.0), np.float16(-2.0)]:
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
      gradnoise.noisy(optax.sgd(0.1), eta=0.1, key=KEY, clip_norm=bad)
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
      gradnoise.noisy(optax.sgd(0.1), eta=0.1, key=KEY, clip_norm=bad, clip_per_leaf=True)
    for clip in [gradnoise.clip_by_leaf_norm, gradnoise.noise.clip_by_global_norm]:
      with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip(bad)


def test_raw_uint32_key_accepted():
  def first_noise(key):
    tx = gradnoise.add_gradient_noise(0.1, key=key)
    return tx.update({"g": jnp.zeros(4)}, tx.init(None))[0]["g"]

  np.testing.assert_array_equal(first_noise(jax.random.PRNGKey(42)), first_noise(KEY))


@pytest.mark.parametrize("eta, gamma", [
    (jnp.bfloat16(0.25), jnp.bfloat16(0.5)),
    (jnp.float16(0.25), np.float16(0.5)),
    (np.float64(0.25), np.float32(0.5)),
    (np.asarray(0.25), np.asarray(0.5, np.float16)),
    (jnp.asarray(0.25, jnp.bfloat16), jnp.asarray(0.5)),
    (1, 0),
])
def test_hyperparameters_of_any_real_dtype(eta, gamma):
  tx = gradnoise.add_gradient_noise(eta, gamma, KEY)
  state = tx.init(None)
  for _ in range(2):
    updates, state = tx.update({"g": jnp.zeros(N)}, state)
  std = np.sqrt(float(eta) / 2 ** float(gamma))  # t = 1; 0.25 and 0.5 are exact in bf16
  assert state.std.dtype == jnp.float32
  np.testing.assert_allclose(float(state.std), std, rtol=1e-6)
  lo, hi = chi2_variance_interval(std**2, N)
  assert lo < float(jnp.mean(updates["g"] ** 2)) < hi
  sched = gradnoise.add_gradient_noise(schedule=gradnoise.constant_std(eta), key=KEY)
  _, state = sched.update({"g": jnp.zeros(3)}, sched.init(None))
  np.testing.assert_allclose(float(state.std), float(eta), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eta=jnp.bfloat16(-0.1)), "eta must be >= 0"),
    (dict(eta=jnp.asarray(float("nan"), jnp.float16)), "eta must be >= 0"),
    (dict(eta=0.1, gamma=np.float64(-1.0)), "gamma must be >= 0"),
    (dict(eta=np.asarray(float("nan"))), "eta must be >= 0"),
    (dict(eta=np.array([0.1, 0.2])), "eta must be a scalar"),
    (dict(eta="0.1"), "eta must be a real number"),
    (dict(eta=0.1 + 0j), "eta must be a real number"),
    (dict(eta=True), "eta must be a real number"),
])
def test_hyperparameter_value_errors_for_any_dtype(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gradnoise.add_gradient_noise(key=KEY, **kwargs)


def test_bf16_hyperparameters_through_inject_hyperparams_with_bf16_params():
  params = {"g": jnp.zeros(N, jnp.bfloat16)}
  tx = optax.inject_hyperparams(gradnoise.add_gradient_noise)(eta=0.25, gamma=0.0, key=KEY)
  state = tx.init(params)
  assert state.hyperparams["eta"].dtype == jnp.bfloat16  # optax casts to the params' dtype
  update = jax.jit(tx.update)
  updates, state = update(params, state, params)
  assert updates["g"].dtype == jnp.bfloat16
  np.testing.assert_allclose(float(state.inner_state.std), 0.5, rtol=1e-6)
  state.hyperparams["eta"] = jnp.asarray(0.0625, jnp.bfloat16)
  updates, state = update(params, state, params)
  np.testing.assert_allclose(float(state.inner_state.std), 0.25, rtol=1e-6)
  lo, hi = chi2_variance_interval(0.0625, N)
  assert lo * 0.99 < float(jnp.mean(updates["g"].astype(jnp.float32) ** 2)) < hi * 1.01
  assert update._cache_size() == 1
  # noisy() with bf16 values, directly and through inject_hyperparams.
  grads = {"g": jnp.array([30.0, 40.0], jnp.bfloat16)}
  direct = gradnoise.noisy(optax.sgd(1.0), eta=jnp.bfloat16(0.0), gamma=jnp.bfloat16(0.55),
                           key=KEY, clip_norm=jnp.bfloat16(5.0))
  injected = optax.inject_hyperparams(gradnoise.noisy)(
      optimizer=optax.sgd(1.0), key=KEY, eta=0.0, clip_norm=5.0)
  for tx in (direct, injected):
    updates, _ = tx.update(grads, tx.init(grads), grads)
    assert updates["g"].dtype == jnp.bfloat16
    np.testing.assert_allclose(updates["g"].astype(jnp.float32), [-3.0, -4.0], rtol=1e-2)


@pytest.mark.parametrize("draw", ["fused", "per_leaf"])
def test_float64_leaves_get_float64_noise(draw):
  with jax.enable_x64(True):
    grads = {"one": jnp.full(1000, 1 + 1e-12, jnp.float64), "f32": jnp.zeros(N, jnp.float32),
             "f64": jnp.zeros(N, jnp.float64)}
    # std 1e-15: far below float32 resolution at 1, above float64's (2.2e-16).
    tiny = gradnoise.add_gradient_noise(1e-30, 0.0, KEY, draw=draw)
    updates, _ = jax.jit(tiny.update)(grads, tiny.init(grads))
    one = np.asarray(updates["one"])
    assert one.dtype == np.float64
    assert np.all(one != 1.0)
    assert np.max(np.abs(one - (1 + 1e-12))) < 1e-13
    assert len(np.unique(one)) > 10  # noise really added, at float64 resolution
    # Statistics of float64 noise; float32 leaves keep float32 sampling.
    tx = gradnoise.add_gradient_noise(0.3, 0.0, KEY, draw=draw)
    updates, _ = tx.update(grads, tx.init(grads))
    assert updates["f32"].dtype == jnp.float32 and updates["f64"].dtype == jnp.float64
    x = np.asarray(updates["f64"])
    lo, hi = chi2_variance_interval(0.3, N)
    assert lo < np.mean(x**2) < hi and abs(x.mean()) < 3.29 * np.sqrt(0.3 / N)
    assert np.mean(x != x.astype(np.float32).astype(np.float64)) > 0.99
    assert abs(np.corrcoef(x, np.asarray(updates["f32"]))[0, 1]) < 4 / np.sqrt(N)
    # The float32 noise does not depend on the float64 leaves next to it.
    alone, _ = tx.update({"f32": grads["f32"]}, tx.init(None))
    np.testing.assert_array_equal(updates["f32"], alone["f32"])
  assert jnp.asarray(1.0).dtype == jnp.float32  # x64 switched off again


def complex_noise_stats(z, variance):
  """Checks mean 0, E|z|^2 = variance and independent parts of variance / 2 each."""
  z = np.asarray(z, np.complex128)
  n = z.size
  re, im = z.real, z.imag
  for part in (re, im):
    assert abs(part.mean()) < 3.29 * np.sqrt(variance / 2 / n)
    lo, hi = chi2_variance_interval(variance / 2, n)
    assert lo < np.mean(part**2) < hi
    assert stats.kstest(part / np.sqrt(variance / 2), "norm").pvalue > 1e-3
  lo, hi = chi2_variance_interval(variance, 2 * n)  # |z|^2 / (variance / 2): chi2(2) each
  assert lo < np.mean(np.abs(z) ** 2) < hi
  assert abs(np.corrcoef(re, im)[0, 1]) < 4 / np.sqrt(n)


@pytest.mark.parametrize("draw", ["fused", "per_leaf"])
def test_complex_leaves_get_complex_gaussian_noise(draw):
  grads = {"c": jnp.zeros(N, jnp.complex64), "r": jnp.zeros(N, jnp.float32)}
  tx = gradnoise.add_gradient_noise(0.5, 0.0, KEY, draw=draw)
  updates, _ = tx.update(grads, tx.init(grads))
  assert updates["c"].dtype == jnp.complex64
  complex_noise_stats(updates["c"], 0.5)
  assert abs(np.corrcoef(np.real(updates["c"]), updates["r"])[0, 1]) < 4 / np.sqrt(N)
  # optax.add_noise's convention (jax.random.normal's for complex dtypes): the same.
  reference = optax.add_noise(0.5, 0.0, jax.random.key(1))
  ref, _ = reference.update(grads, reference.init(grads))
  complex_noise_stats(ref["c"], 0.5)
  with jax.enable_x64(True):
    grads = {"c": jnp.zeros(N, jnp.complex128)}
    updates, _ = tx.update(grads, tx.init(grads))
    assert updates["c"].dtype == jnp.complex128
    complex_noise_stats(updates["c"], 0.5)


def test_complex_leaves_clipped_by_modulus():
  grads = {"c": jnp.array([3 + 4j, 0j], jnp.complex64), "i": jnp.arange(2)}
  clipped, _ = gradnoise.clip_by_leaf_norm(1.0).update(grads, optax.EmptyState())
  assert clipped["c"].dtype == jnp.complex64
  np.testing.assert_allclose(clipped["c"], [0.6 + 0.8j, 0], rtol=1e-6)
  np.testing.assert_array_equal(clipped["i"], grads["i"])
  # Global norm over a complex and a real leaf: sqrt(|3+4i|^2 + 12^2) = 13.
  grads = {"c": jnp.array([3 + 4j], jnp.complex64), "r": jnp.array([12.0])}
  tx = gradnoise.noisy(optax.identity(), eta=0.0, key=KEY, clip_norm=1.3)
  clipped, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(clipped["c"], [0.3 + 0.4j], rtol=1e-6)
  np.testing.assert_allclose(clipped["r"], [1.2], rtol=1e-6)
  ref, _ = optax.clip_by_global_norm(1.3).update(grads, optax.EmptyState())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), clipped, ref)


def clip_with(kind, threshold):
  if kind == "leaf":
    return gradnoise.clip_by_leaf_norm(threshold)
  if kind == "global":
    return gradnoise.noise.clip_by_global_norm(threshold)
  return gradnoise.noisy(optax.identity(), eta=0.0, key=KEY, clip_norm=threshold,
                         clip_per_leaf=kind == "noisy_leaf")


@pytest.mark.parametrize("kind", ["leaf", "global", "noisy", "noisy_leaf"])
@pytest.mark.parametrize("value, threshold", [(1e20, 1.0), (-3e37, 7.0), (3e38, 2.0),
                                              (1e-30, 1e-31)])
def test_clipping_without_overflow_or_underflow(kind, value, threshold):
  # Squares of 1e20 overflow float32, squares of 1e-30 underflow to 0; the norm of four
  # entries near 3e38 exceeds float32's range itself.
  g = jnp.full(4, value, jnp.float32).at[1].multiply(0.5)
  grads = {"g": g}
  tx = clip_with(kind, threshold)
  clipped, _ = jax.jit(tx.update)(grads, tx.init(grads))
  out = np.asarray(clipped["g"], np.float64)
  assert clipped["g"].dtype == jnp.float32 and np.all(np.isfinite(out))
  np.testing.assert_allclose(np.linalg.norm(out), threshold, rtol=1e-5)
  direction = np.asarray(g, np.float64) / np.linalg.norm(np.asarray(g, np.float64))
  np.testing.assert_allclose(out / np.linalg.norm(out), direction, rtol=1e-5)


@pytest.mark.parametrize("kind", ["leaf", "global"])
@pytest.mark.parametrize("exponent", [-30, -15, 0, 15, 30, 37])
def test_clip_matches_float64_reference_across_magnitudes(kind, exponent):
  rng = np.random.default_rng(exponent + 100)
  g = (rng.choice([-1, 1], 1000) * 10.0 ** (exponent + rng.uniform(-3, 0, 1000))).astype(
      np.float32)
  g64 = g.astype(np.float64)
  norm = np.linalg.norm(g64)
  threshold = np.float32(norm / 4)
  tx = clip_with(kind, threshold)
  clipped, _ = tx.update({"g": jnp.asarray(g)}, tx.init(None))
  out = np.asarray(clipped["g"], np.float64)
  np.testing.assert_allclose(np.linalg.norm(out), threshold, rtol=1e-5)
  np.testing.assert_allclose(out, g64 * (float(threshold) / norm), rtol=1e-5,
                             atol=float(threshold) * 1e-7)


def test_float64_clipping_without_overflow():
  with jax.enable_x64(True):
    g = jnp.array([1e200, -2e200, 2e200], jnp.float64)  # squares overflow float64
    for kind in ["leaf", "global"]:
      clipped, _ = clip_with(kind, 3.0).update({"g": g}, optax.EmptyState())
      assert clipped["g"].dtype == jnp.float64
      np.testing.assert_allclose(clipped["g"], [1.0, -2.0, 2.0], rtol=1e-12)


@pytest.mark.parametrize("kind", ["leaf", "global", "noisy", "noisy_leaf"])
def test_zero_gradients_stay_zero_and_traced_thresholds_never_nan(kind):
  grads = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2, jnp.bfloat16),
           "c": jnp.zeros(2, jnp.complex64)}
  tx = clip_with(kind, 1.0)
  clipped, _ = tx.update(grads, tx.init(grads))
  assert_bitwise_equal(clipped, grads)

  @jax.jit
  def clip_traced(g, threshold):
    tx = clip_with(kind, threshold)
    return tx.update(g, tx.init(g))[0]

  for threshold in [0.0, -1.0]:  # not checkable when traced: zeroes, never NaN
    zero = clip_traced(grads, threshold)
    ones = clip_traced(jax.tree.map(jnp.ones_like, grads), threshold)
    for leaf in jax.tree.leaves([zero, ones]):
      np.testing.assert_array_equal(np.abs(np.asarray(leaf, np.complex64)), 0.0)
  unclipped = clip_traced(jax.tree.map(jnp.ones_like, grads), jnp.inf)
  jax.tree.map(lambda u: np.testing.assert_array_equal(u, 1), unclipped)


def test_global_clip_matches_optax_on_ordinary_gradients():
  grads = {"w": 3 * jax.random.normal(KEY, (20, 5)), "b": jnp.arange(5.0), "i": jnp.arange(3)}
  floats = {"w": grads["w"], "b": grads["b"]}
  for threshold in [1.0, 1e6]:
    ours, _ = gradnoise.noise.clip_by_global_norm(threshold).update(grads, optax.EmptyState())
    ref, _ = optax.clip_by_global_norm(threshold).update(floats, optax.EmptyState())
    for name in floats:
      np.testing.assert_allclose(ours[name], ref[name], rtol=1e-6)
    np.testing.assert_array_equal(ours["i"], grads["i"])
  assert_bitwise_equal(ours, grads)  # unclipped: returned bit for bit


def test_optax_style_positional_call_and_int_seeds():
  grads = {"g": jnp.zeros(5)}

  def first_noise(tx):
    return np.asarray(tx.update(grads, tx.init(grads))[0]["g"])

  expected = first_noise(gradnoise.add_gradient_noise(0.01, 0.55, key=jax.random.key(0)))
  assert np.all(expected != 0)
  for seed in [0, np.int64(0), np.uint32(0), np.asarray(0), jnp.asarray(0, jnp.int32)]:
    np.testing.assert_array_equal(first_noise(gradnoise.add_gradient_noise(0.01, 0.55, seed)),
                                  expected)
  np.testing.assert_array_equal(
      first_noise(gradnoise.add_gradient_noise(0.01, 0.55, key=0)), expected)

  @jax.jit
  def traced(seed):
    tx = gradnoise.add_gradient_noise(0.01, 0.55, seed)
    return tx.update(grads, tx.init(grads))[0]["g"]

  np.testing.assert_allclose(traced(0), expected, rtol=1e-6)  # compiled: same up to rounding
  assert not np.array_equal(first_noise(gradnoise.add_gradient_noise(0.01, 0.55, 1)), expected)
  # As optax.add_noise's positional call, through inject_hyperparams and in noisy().
  injected = optax.inject_hyperparams(gradnoise.add_gradient_noise)(0.01, 0.55, 0)
  np.testing.assert_array_equal(first_noise(injected), expected)
  chained = gradnoise.noisy(optax.identity(), eta=0.01, key=0)
  np.testing.assert_array_equal(first_noise(chained), expected)


def test_tree_get_finds_state_fields_by_name():
  eta, gamma = 0.3, 0.55
  for tx in [gradnoise.add_gradient_noise(eta, gamma, KEY),
             gradnoise.noisy(optax.sgd(0.1), eta=eta, gamma=gamma, key=KEY, clip_norm=1.0)]:
    params = {"g": jnp.zeros(4)}
    state = tx.init(params)
    for _ in range(2):
      _, state = tx.update(params, state, params)
    assert int(optax.tree_utils.tree_get(state, "count")) == 2
    np.testing.assert_allclose(float(optax.tree_utils.tree_get(state, "std")),
                               np.sqrt(eta / 2**gamma), rtol=1e-6)
    rng_key = optax.tree_utils.tree_get(state, "rng_key")
    np.testing.assert_array_equal(jax.random.key_data(rng_key), jax.random.key_data(KEY))
    assert optax.tree_utils.tree_get(state, "key") is None
  # Reseeding through optax's setter changes the noise.
  grads = {"g": jnp.zeros(4)}
  tx = gradnoise.add_gradient_noise(eta, gamma, KEY)
  state = tx.init(grads)
  reseeded = optax.tree_utils.tree_set(state, rng_key=jax.random.key(7))
  assert not np.array_equal(tx.update(grads, state)[0]["g"], tx.update(grads, reseeded)[0]["g"])


@pytest.mark.parametrize("schedule, std_at", [
    (gradnoise.annealed_std(1.0, 0.55), lambda t: np.sqrt(1.0 / (1 + t) ** 0.55)),
    (gradnoise.constant_std(0.3), lambda t: 0.3),
    (optax.exponential_decay(0.5, 1, 0.8), lambda t: 0.5 * 0.8**t),
])
def test_variance_scales_with_t_over_successive_updates(schedule, std_at):
  n = 50_000
  tx = gradnoise.add_gradient_noise(schedule=schedule, key=KEY)
  update = jax.jit(tx.update)
  state = tx.init(None)
  variances = []
  for t in range(12):
    updates, state = update({"g": jnp.zeros(n)}, state)
    np.testing.assert_allclose(float(state.std), std_at(t), rtol=1e-5)
    lo, hi = chi2_variance_interval(std_at(t) ** 2, n, level=0.9999)
    variances.append(float(jnp.mean(updates["g"] ** 2)))
    assert lo < variances[-1] < hi
  if std_at(0) != std_at(11):
    assert variances[-1] < variances[0]


def test_noisy_sgd_converges_on_quadratic():
  target = jnp.linspace(-2.0, 3.0, 10)

  def loss(x):
    return 0.5 * jnp.sum((x - target) ** 2)

  def train(tx, steps=300):
    x, state = jnp.zeros(10), tx.init(jnp.zeros(10))

    def step(carry, _):
      x, state = carry
      updates, state = tx.update(jax.grad(loss)(x), state, x)
      return (optax.apply_updates(x, updates), state), loss(x)

    (x, _), losses = jax.lax.scan(step, (x, state), None, length=steps)
    return x, losses

  x, losses = train(gradnoise.noisy(optax.sgd(0.1), eta=0.01, key=KEY))
  plain, _ = train(optax.sgd(0.1))
  assert float(losses[0]) == float(loss(jnp.zeros(10)))
  # Stationary error per coordinate: var = lr sigma_t^2 / (2 - lr) ~ 2.3e-5 at t = 300,
  # so |x - target| ~ 0.015 (the noiseless error has decayed as 0.9^300).
  np.testing.assert_allclose(plain, target, atol=1e-5)
  assert float(jnp.linalg.norm(x - target)) < 0.1
  assert float(loss(x)) < 1e-4 * float(losses[0])
  assert not np.allclose(x, plain, atol=1e-4)  # the noise was really there


SHARDING_SCRIPT = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, optax, gradnoise
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(jax.devices(), ("model",))
    shard = NamedSharding(mesh, P("model", None))
    params = {"w": jax.device_put(jnp.ones((64, 32)), shard),
              "v": jax.device_put(jnp.ones((128, 8)), shard)}
    out = {}
    for draw in ["per_leaf", "fused"]:
      tx = gradnoise.noisy(optax.sgd(0.1), eta=0.1, key=jax.random.key(0), clip_norm=10.0,
                           draw=draw)
      state = jax.device_put(tx.init(params), NamedSharding(mesh, P()))
      update = jax.jit(tx.update)
      hlo = update.lower(params, state, params).compile().as_text()
      updates, _ = update(params, state, params)
      out[draw] = {"all_gather": "all-gather" in hlo,
                   "shardings_kept": all(u.sharding.is_equivalent_to(shard, u.ndim)
                                         for u in jax.tree.leaves(updates)),
                   "num_devices": len(updates["w"].sharding.device_set)}
    print(json.dumps(out))
""")


def test_sharded_params_get_shard_local_noise():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  per_leaf = result["per_leaf"]
  assert per_leaf == {"all_gather": False, "shardings_kept": True, "num_devices": 4}
  # The fused draw also keeps the sharding (it may compute the draw redundantly).
  assert result["fused"]["shardings_kept"]


def test_norm_of_tiny_gradients_beside_a_constant_zero_leaf_under_jit():
  # XLA must not rewrite (x c)^2 as x^2 c^2 (c^2 overflows): a constant-zero leaf, as an
  # unused parameter's gradient, once made the norm NaN.
  from gradnoise.noise import _norm_parts
  for value in (1e-30, 1e30):
    r, c = jax.jit(lambda x: _norm_parts([x, jnp.zeros(3)], jnp.float32))(jnp.full(3, value))
    np.testing.assert_allclose(float(r) / float(c), np.sqrt(3.0) * value, rtol=1e-5)
