"""The noise family: Langevin, anticorrelated, multiplicative, relative and PGD noise.

The contract tests run over the whole family (as optax's transform tests run over their
transforms); the statistics of each kind follow.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import gradnoise

KEY = jax.random.key(7)
N = 100_000  # coordinates per statistical check
LR = 0.1  # learning rate of the Langevin transform in the contract tests


def make(kind, strength, key=KEY, draw="auto"):
  """The ``kind`` transform with its strength (sigma, T or r) set to ``strength``."""
  if kind == "langevin":
    return gradnoise.add_langevin_noise(LR, strength, key, draw=draw)
  if kind == "anticorrelated":
    return gradnoise.add_anticorrelated_noise(strength, key, draw=draw)
  if kind == "multiplicative":
    return gradnoise.add_multiplicative_noise(strength, key, draw=draw)
  if kind in ("relative_gradient", "relative_params"):
    return gradnoise.add_relative_noise(strength, key, relative_to=kind.split("_")[1],
                                        draw=draw)
  assert kind == "pgd"
  return gradnoise.add_pgd_perturbation(strength, float("inf"), 0, key, draw=draw)


KINDS = ["langevin", "anticorrelated", "multiplicative", "relative_gradient",
         "relative_params", "pgd"]
STATES = {"langevin": gradnoise.GradientNoiseState,
          "anticorrelated": gradnoise.AnticorrelatedNoiseState,
          "multiplicative": gradnoise.MultiplicativeNoiseState,
          "relative_gradient": gradnoise.RelativeNoiseState,
          "relative_params": gradnoise.RelativeNoiseState,
          "pgd": gradnoise.PerturbationState}


GRADS = {"w": jax.random.normal(jax.random.key(1), (40, 25)),
         "b": jnp.array([-0.0, 0.0, 1e-30, -2.5, 3.0]),
         "h": jnp.array([-0.0, 1.5, 2.0], jnp.bfloat16),
         "c": jnp.array([1 + 2j, -0.0, 3j], jnp.complex64),
         "i": jnp.arange(3), "none": None}
PARAMS = jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.inexact) else x, GRADS)


def run(tx, grads=GRADS, steps=1, params=PARAMS, state=None, jit=True):
  """Applies ``steps`` updates of the same gradients (compiled unless ``jit=False``);
  returns the last updates and state."""
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params) if state is None else state
  for _ in range(steps):
    updates, state = update(grads, state, params)
  return updates, state


def chi2_variance_interval(variance, n, level=0.999):
  """Interval that n * s^2 / variance falls in with probability ``level`` (mean known 0)."""
  lo, hi = stats.chi2.ppf([(1 - level) / 2, (1 + level) / 2], df=n)
  return variance * lo / n, variance * hi / n


def assert_normal(x, variance):
  """Mean within 3.29 standard errors and mean square in the chi-square 99.9% interval."""
  x = np.asarray(x, np.float64).ravel()
  assert abs(x.mean()) < 3.29 * np.sqrt(variance / x.size)
  lo, hi = chi2_variance_interval(variance, x.size)
  assert lo < np.mean(x**2) < hi


def assert_bitwise_equal(tree_a, tree_b):
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


# Contract, over the whole family.


@pytest.mark.parametrize("kind", KINDS)
def test_zero_strength_returns_updates_bit_for_bit(kind):
  # Op by op here; compiled in test_traced_strength_vmap_and_inject_hyperparams.
  updates, state = run(make(kind, 0.0), jit=False)
  assert updates["none"] is None
  assert_bitwise_equal(updates, GRADS)
  assert isinstance(state, STATES[kind]) and int(state.count) == 1
  if kind == "pgd":
    assert int(state.last_perturbation) == -1  # r = 0 never perturbs


def as_complex(tree):
  """Every leaf as a complex128 NumPy array (None dropped), for numeric comparisons."""
  return [np.asarray(jnp.asarray(x, jnp.complex64), np.complex128) for x in jax.tree.leaves(tree)]


STRENGTH_NAMES = {"langevin": "temperature", "pgd": "radius"}


def injected(kind):
  """The ``kind`` transform at strength 0.5 through ``optax.inject_hyperparams``, which
  passes the strength as a traced bf16 array (0.5 is exact in bf16)."""
  inject = functools.partial(optax.inject_hyperparams, hyperparam_dtype=jnp.bfloat16)
  if kind == "pgd":
    return inject(gradnoise.add_pgd_perturbation, static_args=("wait",))(
        radius=0.5, grad_threshold=float("inf"), wait=0, key=KEY)
  if kind == "langevin":
    return inject(gradnoise.add_langevin_noise, static_args=("learning_rate",))(
        learning_rate=LR, temperature=0.5, key=KEY)
  if kind.startswith("relative"):
    return inject(gradnoise.add_relative_noise)(sigma=0.5, key=KEY,
                                                relative_to=kind.split("_")[1])
  return inject(getattr(gradnoise, f"add_{kind}_noise"))(sigma=0.5, key=KEY)


@pytest.mark.parametrize("kind", KINDS)
def test_traced_strength_vmap_and_inject_hyperparams(kind):
  traces = []

  @jax.jit
  def two_updates(strength):
    traces.append(1)
    return run(make(kind, strength), steps=2)

  strengths = [0.0, 0.5, 1.0, 0.1]
  (zero, _), (half, state), (one, _) = [two_updates(s) for s in strengths[:3]]
  # One compilation for all strengths; zero strength is bit exact when compiled too.
  assert len(traces) == 1 and two_updates._cache_size() == 1
  assert_bitwise_equal(zero, GRADS)
  assert not np.array_equal(half["w"], one["w"])
  # Under vmap over strengths, each run equals that strength alone.
  batched, _ = jax.jit(jax.vmap(two_updates))(jnp.asarray(strengths))
  for i, strength in enumerate(strengths):
    one_run = jax.tree.map(lambda x, i=i: x[i], batched)
    if i == 0:
      assert_bitwise_equal(one_run, GRADS)
    for a, b in zip(as_complex(one_run), as_complex(two_updates(strength)[0]), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Noise on the float and complex leaves only, dtypes kept.
  assert half["none"] is None
  np.testing.assert_array_equal(half["i"], GRADS["i"])
  for name in ("w", "b", "h", "c"):
    assert half[name].dtype == GRADS[name].dtype
  assert np.all(np.asarray(half["w"]) != np.asarray(GRADS["w"]))
  assert np.all(np.asarray(half["c"])[[0, 2]] != np.asarray(GRADS["c"])[[0, 2]])
  assert isinstance(state, STATES[kind]) and int(state.count) == 2
  rng_key = optax.tree_utils.tree_get(state, "rng_key")
  np.testing.assert_array_equal(jax.random.key_data(rng_key), jax.random.key_data(KEY))
  # The same through optax.inject_hyperparams, with a bf16 strength, then set to 0.
  tx = injected(kind)
  update = jax.jit(tx.update)
  state = tx.init(PARAMS)
  name = STRENGTH_NAMES.get(kind, "sigma")
  assert state.hyperparams[name].dtype == jnp.bfloat16
  for _ in range(2):
    updates, state = update(GRADS, state, PARAMS)
  for a, b in zip(as_complex(updates), as_complex(half), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  state.hyperparams[name] = jnp.zeros_like(state.hyperparams[name])
  updates, _ = update(GRADS, state, PARAMS)
  assert_bitwise_equal(updates, GRADS)
  assert update._cache_size() == 1


def make_restorable(kind, key, draw):
  # PGD with a threshold above the norm and wait 2 perturbs at updates 0, 3, 6, ...: its
  # last_perturbation decides whether an update is perturbed.
  if kind == "pgd":
    return gradnoise.add_pgd_perturbation(0.5, 1e9, 2, key, draw=draw)
  return make(kind, 0.5, key=key, draw=draw)


@pytest.mark.parametrize("draw", ["fused", "per_leaf"])
@pytest.mark.parametrize("kind", KINDS)
def test_state_rebuilt_from_the_key_draws_the_same_noise(kind, draw):
  @jax.jit
  def update(state):  # the transform rebuilt from the seed at every call
    return make_restorable(kind, 7, draw).update(GRADS, state, PARAMS)

  state = make_restorable(kind, KEY, draw).init(PARAMS)
  for _ in range(6):
    _, state = update(state)
  # A checkpoint after update 5 keeps the counters as NumPy values, not the key.
  checkpoint = {f: np.asarray(v) for f, v in state._asdict().items() if f != "rng_key"}
  expected = []
  for _ in range(2):  # updates 6 and 7 of the uninterrupted run
    updates, state = update(state)
    expected.append(updates)
  assert not np.array_equal(expected[0]["w"], GRADS["w"])
  restored = make_restorable(kind, 7, draw).init(PARAMS)._replace(
      **{f: jnp.asarray(v) for f, v in checkpoint.items()})
  for want in expected:
    got, restored = update(restored)
    assert_bitwise_equal(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_leaves_get_float32_noise_rounded_once(kind):
  # bf16 leaves are computed in float32 and rounded once: the same values as float32 leaves
  # holding the same numbers, cast to bf16.
  f32 = {"w": GRADS["w"].astype(jnp.bfloat16).astype(jnp.float32), "i": jnp.arange(2)}
  bf16 = {"w": f32["w"].astype(jnp.bfloat16), "i": f32["i"]}
  out16, _ = run(make(kind, 0.5), bf16, params=bf16, jit=False)
  out32, _ = run(make(kind, 0.5), f32, params=f32, jit=False)
  assert out16["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(out16["w"], out32["w"].astype(jnp.bfloat16))
  # Most entries change (PGD's perturbation, about r / sqrt(d) per entry, is partly below
  # bf16's resolution).
  assert np.mean(np.asarray(out16["w"] != bf16["w"])) > 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_float64_leaves_get_float64_noise(kind):
  with jax.enable_x64(True):
    grads = {"f64": jnp.ones(1000, jnp.float64), "f32": jnp.ones(1000, jnp.float32)}
    updates, _ = run(make(kind, 0.5), grads, params=grads)
    assert updates["f64"].dtype == jnp.float64 and updates["f32"].dtype == jnp.float32
    noise = np.asarray(updates["f64"]) - 1
    assert np.mean(noise != noise.astype(np.float32)) > 0.99  # float64 resolution
  assert jnp.asarray(1.0).dtype == jnp.float32  # x64 switched off again


@pytest.mark.parametrize("build, match", [
    (lambda: gradnoise.add_langevin_noise(0.0, 1.0, KEY), "learning_rate must be > 0"),
    (lambda: gradnoise.add_langevin_noise(-0.1, 1.0, KEY), "learning_rate must be > 0"),
    (lambda: gradnoise.add_langevin_noise(0.1, -1.0, KEY), "temperature must be >= 0"),
    (lambda: gradnoise.add_langevin_noise(0.1, float("nan"), KEY), "temperature must be >= 0"),
    (lambda: gradnoise.add_langevin_noise(0.1, 1.0, None), "key is required"),
    (lambda: gradnoise.add_anticorrelated_noise(-0.1, KEY), "sigma must be >= 0"),
    (lambda: gradnoise.add_anticorrelated_noise(jnp.bfloat16(float("nan")), KEY),
     "sigma must be >= 0"),
    (lambda: gradnoise.add_anticorrelated_noise(0.1, KEY, draw="fast"), "draw must be"),
    (lambda: gradnoise.add_multiplicative_noise(np.array([0.1, 0.2]), KEY),
     "sigma must be a scalar"),
    (lambda: gradnoise.add_multiplicative_noise("0.1", KEY), "sigma must be a real number"),
    (lambda: gradnoise.add_multiplicative_noise(0.1, 1.5), "key must be a JAX PRNG key"),
    (lambda: gradnoise.add_relative_noise(0.1, KEY, relative_to="weights"),
     "relative_to must be"),
    (lambda: gradnoise.add_relative_noise(True, KEY), "sigma must be a real number"),
    (lambda: gradnoise.add_pgd_perturbation(-1.0, 1.0, 0, KEY), "radius must be >= 0"),
    (lambda: gradnoise.add_pgd_perturbation(1.0, -1.0, 0, KEY),
     "grad_threshold must be >= 0"),
    (lambda: gradnoise.add_pgd_perturbation(1.0, 1.0, -1, KEY), "wait must be an int >= 0"),
    (lambda: gradnoise.add_pgd_perturbation(1.0, 1.0, 1.5, KEY), "wait must be an int"),
    (lambda: gradnoise.add_pgd_perturbation(1.0, 1.0, True, KEY), "wait must be an int"),
    (lambda: jax.jit(lambda k: gradnoise.add_pgd_perturbation(1.0, 1.0, k, KEY))(2),
     "static, not traced"),
])
def test_value_errors(build, match):
  with pytest.raises(ValueError, match=match):
    build()


# Statistics of each kind.


@pytest.mark.parametrize("learning_rate, lr_at", [
    (0.05, lambda t: 0.05),
    (optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5), lambda t: 0.2 * 0.5**t),
])
def test_sgld_parameter_noise_variance_is_2_lr_t(learning_rate, lr_at):
  temperature = 0.01
  tx = optax.chain(gradnoise.add_langevin_noise(learning_rate, temperature, KEY),
                   optax.sgd(learning_rate))
  params = {"p": jnp.zeros(N)}
  update = jax.jit(tx.update)
  state = tx.init(params)
  for t in range(3):
    # With a zero gradient the SGD step is -lr_t * noise: the parameter noise.
    step, state = update({"p": jnp.zeros(N)}, state, params)
    assert_normal(step["p"], 2 * lr_at(t) * temperature)
    np.testing.assert_allclose(float(state[0].std), np.sqrt(2 * temperature / lr_at(t)),
                               rtol=1e-5)


def test_langevin_std_is_zero_without_temperature_or_step():
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=2)
  std = gradnoise.langevin_std(schedule, 0.5)
  np.testing.assert_allclose([float(std(t)) for t in range(4)],
                             [np.sqrt(10.0), np.sqrt(20.0), 0.0, 0.0], rtol=1e-5)
  assert float(gradnoise.langevin_std(schedule, 0.0)(0)) == 0.0


def test_anticorrelated_noise_statistics_across_coordinates():
  sigma = 0.3
  tx = gradnoise.add_anticorrelated_noise(sigma, KEY)
  grads = {"g": jnp.zeros(N)}
  update = jax.jit(tx.update)
  state = tx.init(grads)
  noise = []
  for _ in range(4):
    updates, state = update(grads, state)
    noise.append(np.asarray(updates["g"], np.float64))
  assert_normal(noise[0], sigma**2)  # xi_{-1} = 0
  for t in range(1, 4):
    assert_normal(noise[t], 2 * sigma**2)
  bound = 4 / np.sqrt(N)  # sd of a sample correlation of N pairs is at most 1/sqrt(N)
  assert abs(np.corrcoef(noise[0], noise[1])[0, 1] + 1 / np.sqrt(2)) < bound
  for t in (1, 2):
    assert abs(np.corrcoef(noise[t], noise[t + 1])[0, 1] + 0.5) < bound
  assert abs(np.corrcoef(noise[1], noise[3])[0, 1]) < bound
  # The perturbations telescope: their sum is sigma * xi_3, xi_3 the unit noise that
  # add_gradient_noise draws at update 3 with the same key.
  reference = gradnoise.add_gradient_noise(schedule=gradnoise.constant_std(sigma), key=KEY)
  xi3, _ = reference.update(grads, reference.init(grads)._replace(count=jnp.asarray(3)))
  np.testing.assert_allclose(sum(noise), xi3["g"], atol=1e-5)


def test_anticorrelated_successive_perturbations_correlate_minus_half_per_coordinate():
  steps, sigma = 20_000, 2.0
  tx = gradnoise.add_anticorrelated_noise(sigma, KEY)
  grads = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}

  def at(t):
    updates, _ = tx.update(grads, tx.init(grads)._replace(count=t))
    return jnp.concatenate([updates["a"], updates["b"].ravel()])

  series = np.asarray(jax.jit(jax.vmap(at))(jnp.arange(1, steps + 1)), np.float64)
  # Per coordinate over time: an MA(1) series, lag-1 correlation -1/2 (sd of the estimate
  # about sqrt(0.5 / steps)), lag-2 correlation 0, variance 2 sigma^2.
  bound = 4 / np.sqrt(steps)
  for i in range(series.shape[1]):
    x = series[:, i]
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1] + 0.5) < bound
    assert abs(np.corrcoef(x[:-2], x[2:])[0, 1]) < bound
    lo, hi = chi2_variance_interval(2 * sigma**2, steps, level=0.99999)
    assert lo < np.mean(x**2) < hi  # loose: successive terms are not independent


def test_multiplicative_noise_is_proportional_to_the_gradient():
  sigma = 0.4
  g = jnp.concatenate([jnp.full(N // 2, 0.01), jnp.full(N // 2, -3.0), jnp.zeros(100)])
  tx = gradnoise.add_multiplicative_noise(sigma, KEY)
  update = jax.jit(tx.update)
  out, _ = update({"g": g}, tx.init(None))
  out10, _ = update({"g": 10 * g}, tx.init(None))
  noise = np.asarray(out["g"], np.float64) - np.asarray(g, np.float64)
  for part in (slice(0, N // 2), slice(N // 2, N)):
    assert_normal(noise[part] / np.asarray(g[part], np.float64), sigma**2)  # sd sigma |g|
  np.testing.assert_array_equal(out["g"][N:], 0.0)  # no noise where the gradient is zero
  np.testing.assert_allclose(np.asarray(out10["g"]) - 10 * np.asarray(g), 10 * noise,
                             rtol=1e-4, atol=1e-5)  # the same draw, scaled with g


@pytest.mark.parametrize("relative_to", ["gradient", "params"])
def test_relative_noise_std_follows_each_leaf_norm(relative_to):
  sigma = 0.2
  reference = {"a": 5 * jax.random.normal(jax.random.key(3), (N,)),
               "b": jnp.full((N // 4, 2), 0.01), "z": jnp.zeros(10)}
  grads = (reference if relative_to == "gradient"
           else jax.tree.map(jnp.zeros_like, reference))
  tx = gradnoise.add_relative_noise(sigma, KEY, relative_to=relative_to)
  out, _ = jax.jit(tx.update)(grads, tx.init(reference), reference)
  for name in ("a", "b"):
    ref = np.asarray(reference[name], np.float64)
    noise = np.asarray(out[name], np.float64) - np.asarray(grads[name], np.float64)
    # Per element sd sigma ||ref|| / sqrt(n), so E||noise||^2 = sigma^2 ||ref||^2.
    assert_normal(noise, sigma**2 * np.sum(ref**2) / ref.size)
  assert_bitwise_equal(out["z"], grads["z"])  # a zero reference gets no noise


def test_relative_noise_on_params_needs_params():
  tx = gradnoise.add_relative_noise(0.1, KEY, relative_to="params")
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update({"g": jnp.ones(3)}, tx.init(None))


# Gradient norms of successive updates, and the updates at which PGD must perturb with a
# threshold of 1 (a norm equal to it included; NaN never), for wait = 0 and 2.
PGD_NORMS = [3.0, 1.0, 0.2, 0.2, 0.2, 5.0, 0.5, 0.5, 0.0, 2.0, 0.9, 0.9, float("nan")]
PGD_FIRES = {0: [1, 2, 3, 4, 6, 7, 8, 10, 11], 2: [1, 4, 7, 10]}


@pytest.mark.parametrize("wait", [0, 2])
def test_pgd_perturbs_exactly_under_its_conditions(wait):
  radius = 0.5
  tx = gradnoise.add_pgd_perturbation(radius, 1.0, wait, KEY)
  update = jax.jit(tx.update)
  state = tx.init(None)
  fired, last = [], -1
  for t, norm in enumerate(PGD_NORMS):
    # Leaves of 0.5 * norm: 4 entries, global norm ``norm`` exactly.
    grads = {"a": jnp.full(2, 0.5 * norm), "b": jnp.full((1, 2), 0.5 * norm),
             "i": jnp.arange(2), "none": None}
    updates, state = update(grads, state)
    assert int(state.count) == t + 1
    if not all(np.array_equal(updates[k], grads[k], equal_nan=True) for k in ("a", "b")):
      fired.append(t)
      last = t
      delta = np.concatenate([np.ravel(updates[k] - grads[k]) for k in ("a", "b")])
      assert 0 < np.linalg.norm(delta) <= radius * (1 + 1e-6)
    else:
      assert_bitwise_equal(updates, grads)
    assert int(state.last_perturbation) == last
  assert fired == PGD_FIRES[wait]
  # The reference rule, written out: ||g|| <= g_thres and t - t_noise > wait.
  reference, t_noise = [], None
  for t, norm in enumerate(PGD_NORMS):
    if norm <= 1.0 and (t_noise is None or t - t_noise > wait):
      reference.append(t)
      t_noise = t
  assert reference == fired


@pytest.mark.parametrize("shapes, samples", [
    ({"a": ((2,), jnp.float32), "b": ((1, 3), jnp.float32), "c": ((1,), jnp.complex64)},
     20_000),
    ({"a": ((1000,), jnp.float32)}, 4_000),
])
def test_pgd_perturbation_is_uniform_in_the_ball(shapes, samples):
  radius = 2.0
  grads = {k: jnp.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}
  tx = gradnoise.add_pgd_perturbation(radius, float("inf"), 0, KEY)

  def at(t, grads):  # the perturbation of update t, as real coordinates
    updates, _ = tx.update(grads, tx.init(grads)._replace(count=t))
    parts = [jnp.ravel(updates[k]) for k in sorted(updates)]
    return jnp.concatenate([jnp.concatenate([p.real, p.imag]) if jnp.iscomplexobj(p) else p
                            for p in parts])

  # The gradients are an argument: XLA folds the norm of a constant zero tree to NaN.
  x = np.asarray(jax.jit(jax.vmap(at, (0, None)))(jnp.arange(samples), grads), np.float64)
  d = x.shape[1]
  norms = np.linalg.norm(x, axis=1)
  assert np.all(norms <= radius * (1 + 1e-6))
  # Radius: P(||xi|| <= s r) = s^d, so (||xi|| / r)^d is uniform on (0, 1).
  assert stats.kstest(np.minimum(norms / radius, 1) ** d, "uniform").pvalue > 1e-3
  # Direction uniform on the sphere across all leaves (complex parts included): each real
  # coordinate has mean 0 and E[xi_i^2] = r^2 / (d + 2).
  unit = x / norms[:, None]
  assert np.all(np.abs(unit.mean(axis=0)) < 5 / np.sqrt(d * samples))
  second = x**2
  se = second.std(axis=0) / np.sqrt(samples)
  assert np.all(np.abs(second.mean(axis=0) - radius**2 / (d + 2)) < 5 * se)
