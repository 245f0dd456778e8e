"""Data-dependent initialisation (Kraehenbuehl et al. 2015): experiments/data_dependent_init.py
and model.init=data_dependent of the MNIST MLP."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist_mlp as mnist_configs
from experiments import data_dependent_init as ddi
from experiments import mnist_mlp
from gradnoise import run, sweep, trainer
from gradnoise.errors import UsageError

SIZES = [24] + [16] * 8 + [5]  # 9 layers: deep enough for change rates to spread


def sample(n=128, d=24, seed=0):
  """Inputs with per-feature offsets and scales (as pixels are not standardised)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, d) + rng.uniform(-1.0, 2.0, d)
  return jnp.asarray(x, jnp.float32)


def normalised(beta=0.1, activation=jax.nn.relu, seed=0):
  x = sample()
  layers = ddi.within_layer(ddi.gaussian_layers(jax.random.key(seed), SIZES), x, activation,
                            beta)
  return layers, x


@pytest.mark.parametrize("beta", [0.0, 0.1, -0.5])
@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_within_layer_every_pre_activation_has_std_1_and_mean_beta(beta, activation):
  act = mnist_mlp.ACTIVATIONS[activation]
  layers, x = normalised(beta, act)
  pre = ddi.forward(layers, x, act)
  assert len(pre) == len(SIZES) - 1
  for k, z in enumerate(pre):
    np.testing.assert_allclose(np.std(z, axis=0), 1.0, atol=1e-4, err_msg=f"layer {k}")
    np.testing.assert_allclose(np.mean(z, axis=0), beta, atol=1e-4, err_msg=f"layer {k}")


def test_within_layer_does_not_depend_on_the_weight_scale_or_given_biases():
  x = sample()
  base = ddi.gaussian_layers(jax.random.key(3), SIZES)
  scaled = [{"kernel": 7.0 * l["kernel"], "bias": l["bias"] + 3.0} for l in base]
  a, b = (ddi.within_layer(layers, x, jax.nn.relu, 0.1) for layers in (base, scaled))
  for la, lb in zip(a, b):
    np.testing.assert_allclose(la["kernel"], lb["kernel"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(la["bias"], lb["bias"], rtol=1e-4, atol=1e-5)


def log_spread(rates):
  return float(np.std(np.log(np.asarray(rates))))


def test_change_rate_spread_across_layers_shrinks_over_the_iterations():
  layers, x = normalised()
  _, history = ddi.between_layer(layers, x, jax.random.key(1), jax.nn.relu, 0.25, 10)
  assert history.shape == (11, len(SIZES) - 1)
  spreads = [log_spread(h) for h in history]
  assert spreads[0] > 0.3, spreads  # the normalised network starts far from equal rates
  assert spreads[-1] < 0.25 * spreads[0], spreads  # (1 - alpha)^10 = 0.056 up to noise
  assert spreads[5] < spreads[0] and spreads[-1] < spreads[5], spreads


@pytest.mark.parametrize("alpha", [0.25, 1.0])
def test_one_step_shrinks_each_log_change_rate_by_one_minus_alpha(alpha):
  # Measured with the same eta, a step gives C_k' = C_k / r_k^2 exactly (ReLU network):
  # log C_k' - mean = (1 - alpha) (log C_k - mean), and the geometric mean is kept.
  layers, x = normalised()
  key = jax.random.key(5)
  before = np.log(np.asarray(ddi.change_rates(layers, x, key, jax.nn.relu)))
  stepped = ddi.rescale(layers, jnp.exp(before), alpha)
  after = np.log(np.asarray(ddi.change_rates(stepped, x, key, jax.nn.relu)))
  np.testing.assert_allclose(after - after.mean(), (1 - alpha) * (before - before.mean()),
                             atol=2e-4)
  np.testing.assert_allclose(after.mean(), before.mean(), atol=2e-4)


def test_change_rates_match_per_example_gradients():
  # C_k = mean_j sqrt(mean_i E_b[g_b(j, i)^2] / mean(W_k^2)), g_b: per-example gradient
  # of eta_b . z_L(b) with respect to W_k.
  layers, x = normalised()
  key = jax.random.key(2)
  eta = jax.random.normal(key, (x.shape[0], SIZES[-1]))

  def per_example(layers, xb, eb):
    return jnp.sum(eb * ddi.forward(layers, xb[None], jax.nn.relu)[-1][0])

  grads = jax.vmap(jax.grad(per_example), in_axes=(None, 0, 0))(layers, x, eta)
  expected = [np.mean(np.sqrt(np.mean(np.asarray(g["kernel"]) ** 2, axis=(0, 2))
                              / np.mean(np.asarray(l["kernel"]) ** 2)))
              for g, l in zip(grads, layers)]
  np.testing.assert_allclose(ddi.change_rates(layers, x, key, jax.nn.relu), expected,
                             rtol=1e-4)


def test_between_layer_keeps_a_relu_networks_function_on_the_sample():
  layers, x = normalised()
  new, _ = ddi.between_layer(layers, x, jax.random.key(1), jax.nn.relu, 0.25, 10)
  before, after = ddi.forward(layers, x, jax.nn.relu), ddi.forward(new, x, jax.nn.relu)
  np.testing.assert_allclose(after[-1], before[-1], rtol=1e-4, atol=1e-4)
  scales = []
  for z0, z1 in zip(before[:-1], after[:-1]):  # hidden layers: one positive scale each
    s = float(jnp.sum(z1 * z0) / jnp.sum(z0 * z0))
    assert s > 0
    np.testing.assert_allclose(z1, s * z0, rtol=1e-4, atol=1e-4 * s)
    scales.append(s)
  assert max(scales) / min(scales) > 1.5  # the step did rescale layers
  # ... and it is not a no-op on the weights
  ratios = [float(jnp.sqrt(jnp.mean(n["kernel"] ** 2) / jnp.mean(o["kernel"] ** 2)))
            for n, o in zip(new, layers)]
  assert max(abs(np.log(r)) for r in ratios) > 0.1


def test_between_layer_changes_an_elu_networks_function():
  # ELU is not positively homogeneous: the paper would insert a scaling layer, which the
  # module does not; mnist_mlp therefore refuses ELU with iterations > 0 (below).
  layers, x = normalised(activation=jax.nn.elu)
  new, _ = ddi.between_layer(layers, x, jax.random.key(1), jax.nn.elu, 0.25, 10)
  before, after = (ddi.forward(l, x, jax.nn.elu)[-1] for l in (layers, new))
  assert float(jnp.max(jnp.abs(after - before))) > 1e-2


def test_zero_iterations_is_within_layer_only():
  x = sample()
  key = jax.random.key(4)
  layers, history = ddi.initialise(key, SIZES, x, jax.nn.relu, beta=0.1, alpha=0.25,
                                   iterations=0)
  assert history.shape == (1, len(SIZES) - 1)
  expected = ddi.within_layer(ddi.gaussian_layers(jax.random.split(key)[0], SIZES), x,
                              jax.nn.relu, 0.1)
  for a, b in zip(layers, expected):
    np.testing.assert_array_equal(a["kernel"], b["kernel"])


# --- model.init=data_dependent in the MNIST MLP --------------------------------------------


def small_config(**overrides):
  config = mnist_configs.get_config("quick")
  config.model.depth, config.model.width, config.batch_size = 4, 8, 32
  return sweep.apply_overrides(config, overrides)


def mnist_like_batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  x = np.where(rng.uniform(size=(n, 784)) < 0.2, rng.uniform(size=(n, 784)), 0.0)
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def test_vmapped_init_of_several_runs_equals_each_run_alone():
  runs = [small_config(**{"model.init": "data_dependent", "seed": 0, "model.depth": 2}),
          small_config(**{"model.init": "data_dependent", "seed": 1, "model.depth": 2,
                          "model.ddi.beta": -0.2}),
          small_config(**{"model.init": "data_dependent", "seed": 2, "model.depth": 2,
                          "model.ddi.alpha": 0.5})]
  exp = mnist_mlp.EXPERIMENT
  group = trainer.group_config(runs[0], exp)
  assert group.code_choices["data_dependent"]
  assert all(trainer.group_key(r, exp) == trainer.group_key(runs[0], exp) for r in runs)
  hps = [trainer.run_hparams(r, exp) for r in runs]
  keys = jnp.stack([jax.random.key_data(jax.random.key(i)) for i in range(len(runs))])
  batches = [mnist_like_batch(seed=i) for i in range(len(runs))]
  stacked = {k: jnp.stack([b[k] for b in batches]) for k in batches[0]}
  init = lambda k, b, hp: exp.init_params(jax.random.wrap_key_data(k), b, hp, group)
  together = jax.jit(jax.vmap(init))(keys, stacked, trainer.stack_hparams(hps, len(runs)))
  single = jax.jit(init)
  alone = [single(keys[i], batch, hp) for i, (hp, batch) in enumerate(zip(hps, batches))]
  for i, params in enumerate(alone):
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(together)):
      np.testing.assert_allclose(b[i], a, rtol=1e-5, atol=1e-6)
  # beta, alpha and the key reach each run: no two runs got the same init
  first = [np.asarray(p["layer_0"]["bias"]) for p in alone]
  assert not np.allclose(first[0], first[1]) and not np.allclose(first[0], first[2])


def test_gaussian_inits_compile_apart_and_keep_their_init():
  he = small_config(**{"model.init": "he", "model.depth": 2})
  ddi_run = sweep.apply_overrides(he, {"model.init": "data_dependent"})
  exp = mnist_mlp.EXPERIMENT
  assert trainer.group_key(he, exp) != trainer.group_key(ddi_run, exp)
  group, hp = trainer.group_config(he, exp), trainer.run_hparams(he, exp)
  assert not group.code_choices["data_dependent"]
  batch, key = mnist_like_batch(), jax.random.key(7)
  for a, b in zip(jax.tree.leaves(exp.init_params(key, batch, hp, group)),
                  jax.tree.leaves(mnist_mlp._GAUSSIAN.init_params(key, batch, hp, group))):
    np.testing.assert_array_equal(a, b)


def test_mnist_data_dependent_params_normalise_the_mlp_on_its_sample():
  config = small_config(**{"model.init": "data_dependent", "model.ddi.iterations": 0,
                           "model.ddi.beta": 0.3})
  exp = mnist_mlp.EXPERIMENT
  group, hp = trainer.group_config(config, exp), trainer.run_hparams(config, exp)
  batch = mnist_like_batch()
  params = exp.init_params(jax.random.key(0), batch, hp, group)
  layers = [params[f"layer_{i}"] for i in range(config.model.depth + 1)]
  pre = ddi.forward(layers, batch["x"], jax.nn.relu)
  for z in pre:
    np.testing.assert_allclose(np.std(z, axis=0), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.mean(z, axis=0), 0.3, atol=1e-3)
  # the flax model computes the same function as the module's forward
  logits = exp.eval_fn(params, batch, hp, group)
  module = mnist_mlp.model(hp, group)
  np.testing.assert_allclose(module.apply({"params": params}, batch["x"], train=False),
                             pre[-1], rtol=1e-4, atol=1e-4)
  assert logits["accuracy"].shape == (32,)


def test_data_dependent_is_a_good_init_row_of_every_variant_with_and_without_noise():
  for variant in ("quick", "table1_small", "table1"):
    runs = mnist_configs.get_sweep(variant)
    ddi_runs = [r for r in runs if r.get("model.init") == "data_dependent"]
    assert {r["noise.eta"] for r in ddi_runs} == {0.0, 0.01}, variant
    he = [r for r in runs if r.get("model.init") == "he"]
    strip = lambda r: {k: v for k, v in r.items() if k != "model.init"}
    assert sorted(map(str, map(strip, ddi_runs))) == sorted(map(str, map(strip, he))), variant


def test_ddi_fields_are_declared_traced_and_unused_by_other_inits():
  config = mnist_configs.get_config("quick")
  assert mnist_mlp.unused_fields(config).keys() == set(mnist_mlp.DDI_FIELDS)
  ddi_config = sweep.apply_overrides(config, {"model.init": "data_dependent"})
  assert mnist_mlp.unused_fields(ddi_config) == {}
  # runs of other inits get the same traced values whatever model.ddi.* say
  exp = mnist_mlp.EXPERIMENT
  a = trainer.run_hparams(config, exp)
  b = trainer.run_hparams(sweep.apply_overrides(config, {"model.ddi.beta": 2.0}), exp)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  c = trainer.run_hparams(sweep.apply_overrides(ddi_config, {"model.ddi.beta": 2.0}), exp)
  assert c["ddi_beta"] == 2.0


def test_elu_with_between_layer_steps_is_refused():
  config = small_config(**{"model.init": "data_dependent", "model.activation": "elu"})
  with pytest.raises(UsageError, match="model.ddi.iterations=0"):
    trainer.validate(config, mnist_mlp.EXPERIMENT)
  trainer.validate(sweep.apply_overrides(config, {"model.ddi.iterations": 0}),
                   mnist_mlp.EXPERIMENT)
  trainer.validate(sweep.apply_overrides(config, {"model.init": "he"}), mnist_mlp.EXPERIMENT)


def test_a_sweep_over_ddi_fields_under_another_init_is_refused(tmp_path):
  """``model.ddi.*`` are unused unless model.init=data_dependent (Experiment.unused_fields):
  sweeping them under a Gaussian init would repeat runs."""
  config_file = tmp_path / "ddi_sweep.py"
  config_file.write_text(
      "from configs.mnist_mlp import get_config\n"
      "from gradnoise.sweep import product, seeds, values\n"
      "def get_sweep(arg='quick'):\n"
      "  return product(values('model.ddi.beta', [0.0, 0.1]), seeds(1))\n")
  err = io.StringIO()
  code = run.main(["gradnoise.run", f"--config={config_file}:quick",
                   f"--workdir={tmp_path / 'wd'}"], io.StringIO(), err)
  assert code == 2
  assert ("sets model.ddi.beta (run 0: 0.0), which this run's config does not use "
          "(model.init='simple' is not data_dependent)") in err.getvalue()
  assert not (tmp_path / "wd").exists()
