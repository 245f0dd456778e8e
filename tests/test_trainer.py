"""The shared trainer: sweeps, grouping, vmapped runs, common random numbers, divergence."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import mnist_mlp as mnist_configs
from experiments import mnist_mlp
from gradnoise import experiment, fields, sweep, trainer
from gradnoise.errors import UsageError

EXP = mnist_mlp.EXPERIMENT


def small_config(**overrides):
  config = mnist_configs.get_config("quick")
  config.model.depth, config.model.width = 3, 16
  config.num_epochs, config.batch_size = 2, 32
  config.clip.norm = None
  return sweep.apply_overrides(config, overrides)


def synthetic_data(n_train=256, n_test=100, seed=0):
  """A learnable 10-class problem: the label is the argmax of a fixed projection."""
  rng = np.random.default_rng(seed)
  proj = rng.normal(size=(784, 10)).astype(np.float32)
  x = rng.random((n_train + n_test, 784), dtype=np.float32)
  y = np.argmax(x @ proj, axis=1).astype(np.int32)
  return experiment.Dataset(
      train={"x": x[:n_train], "y": y[:n_train]},
      evals={"test": {"x": x[n_train:], "y": y[n_train:]}},
      description="synthetic")


def train(configs, data=None, rows=None):
  runs = list(enumerate(configs))
  on_metrics = rows.append if rows is not None else (lambda row: None)
  return trainer.train_group(EXP, runs, data or synthetic_data(),
                             trainer.GroupCallbacks(on_metrics))


def test_sweep_helpers():
  assert sweep.seeds(3, start=5) == [{"seed": 5}, {"seed": 6}, {"seed": 7}]
  grid = sweep.product(sweep.values("a", [1, 2]), sweep.values("b", [3, 4, 5]))
  assert len(grid) == 6 and grid[1] == {"a": 1, "b": 4}
  assert sweep.zipped(sweep.values("a", [1, 2]), sweep.values("b", [3, 4])) == [
      {"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(ValueError, match="same length"):
    sweep.zipped(sweep.values("a", [1]), sweep.values("b", [3, 4]))
  assert sweep.fixed(clip__norm=10.0) == [{"clip.norm": 10.0}]


def test_table1_sweep_is_few_compile_groups():
  config = mnist_configs.get_config("table1")
  runs = [sweep.apply_overrides(config, o) for o in mnist_configs.get_sweep("table1")]
  # 6 settings x 2 learning rates x 2 noise levels x 20 seeds, + dropout 2 x 20, + the
  # data-dependent init 2 x 2 x 20.
  assert len(runs) == 6 * 2 * 2 * 20 + 2 * 20 + 2 * 2 * 20
  groups = {}
  for run in runs:
    groups.setdefault(trainer.group_key(run, EXP), []).append(run)
  # Gaussian inits / dropout / data-dependent init (its own code)
  assert sorted(len(g) for g in groups.values()) == [40, 80, 480]


def test_overrides_reject_unknown_fields_and_wrong_types():
  config = small_config()
  with pytest.raises(UsageError, match="unknown config field 'noise.etx'"):
    sweep.apply_overrides(config, {"noise.etx": 0.1})
  with pytest.raises(UsageError, match="noise.eta"):
    sweep.apply_overrides(config, {"noise.eta": "lots"})


def test_run_in_batch_equals_run_alone():
  configs = [small_config(seed=s, **{"noise.eta": eta, "optimizer.learning_rate": lr})
             for s, eta, lr in [(0, 0.0, 0.1), (1, 0.01, 0.1), (2, 0.3, 0.05), (3, 0.01, 0.01)]]
  batch = train(configs)
  alone = train([configs[2]])
  for name in ("train_loss", "test_loss", "test_accuracy"):
    np.testing.assert_allclose(batch[2][name], alone[0][name], rtol=1e-5, atol=1e-6)


def test_same_config_and_seed_give_identical_metrics():
  configs = [small_config(seed=3, **{"noise.eta": 0.01})]
  rows_a, rows_b = [], []
  train(configs, rows=rows_a)
  train(configs, rows=rows_b)
  assert rows_a == rows_b and len(rows_a) == 2


def test_noise_and_no_noise_runs_share_init_and_batch_order():
  data = synthetic_data()
  configs = [small_config(seed=7, **{"noise.eta": eta}) for eta in (0.0, 0.01)]
  hps = [trainer.run_hparams(c, EXP) for c in configs]
  program = trainer.build_program(EXP, configs[0], data.num_train)
  state = program.init(trainer.stack_hparams(hps, 2), data.train)
  for leaf in jax.tree.leaves(state.params):
    np.testing.assert_array_equal(leaf[0], leaf[1])
  orders = [trainer.batch_order(hp, 0, data.num_train, 8, 32) for hp in hps]
  np.testing.assert_array_equal(orders[0], orders[1])
  other_seed = trainer.run_hparams(small_config(seed=8), EXP)
  assert not np.array_equal(orders[0], trainer.batch_order(other_seed, 0, data.num_train, 8, 32))
  # Different epochs reshuffle.
  assert not np.array_equal(orders[0], trainer.batch_order(hps[0], 1, data.num_train, 8, 32))
  # The noisy run's noise differs from run to run only through eta: after one epoch the
  # runs differ.
  results = train(configs, data)
  assert results[0]["train_loss"] != results[1]["train_loss"]


def test_diverged_run_is_frozen_and_others_go_on():
  configs = [small_config(seed=0, **{"optimizer.learning_rate": 1e6, "model.init": "he"}),
             small_config(seed=1, **{"optimizer.learning_rate": 0.1})]
  rows = []
  results = train(configs, rows=rows)
  assert results[0]["diverged"] and not results[1]["diverged"]
  alone = train([configs[1]])
  np.testing.assert_allclose(results[1]["test_loss"], alone[0]["test_loss"], rtol=1e-5)
  # The frozen run's parameters stop changing: its test loss is the same after epoch 1 and 2.
  losses = [r["test_loss"] for r in rows if r["run"] == 0]
  assert losses[0] == losses[1] or np.isnan(losses[0]) and np.isnan(losses[1])


def blowup_loss(params, batch, key, hp, config):
  """A finite loss whose gradient is inf (``hp["nan"]`` 0) or NaN (1) from epoch
  ``hp["blowup_epoch"]`` on: the square root of 0, with slope 1 or 0 there."""
  w = params["w"]
  on = hp["epoch"] >= hp["blowup_epoch"]
  inf_grad = jnp.sum(w - jax.lax.stop_gradient(w)) + jnp.where(on, 0.0, 1.0)
  nan_grad = jnp.where(on, 0.0, 1.0) * (jnp.sum(w**2) + 1.0)
  loss = jnp.sum((w - batch["y"].mean())**2) + jnp.sqrt(
      jnp.where(hp["nan"] > 0, nan_grad, inf_grad))
  return loss, {}


BLOWUP = dataclasses.replace(
    EXP, name="blowup", traced_fields=(),
    hparams=lambda config: {"blowup_epoch": config.blowup_epoch, "nan": config.nan},
    init_params=lambda key, batch, hp, config: {"w": jnp.zeros(3)},
    loss_fn=blowup_loss, eval_fn=lambda params, batch, hp, config: {})


def test_non_finite_gradient_with_finite_loss_diverges_and_freezes():
  # One step per epoch: the blow-up is the last step, so the loss never becomes non-finite.
  data = {"y": np.arange(8, dtype=np.float32)}
  configs = []
  for blowup_epoch, nan in [(1, 0), (1, 1), (99, 0)]:
    config = small_config(batch_size=8, **{"noise.eta": 0.0})
    with config.unlocked():
      config.blowup_epoch, config.nan = blowup_epoch, nan
    configs.append(config)
  program = trainer.build_program(BLOWUP, configs[0], num_train=8)
  hp = trainer.stack_hparams([trainer.run_hparams(c, BLOWUP) for c in configs], 3)
  state = program.init(hp, data)
  state, metrics = program.train_epoch(state, hp, data, np.int32(0))
  before = np.asarray(state.params["w"])
  assert np.all(np.isfinite(before)) and not np.any(state.diverged)
  state, metrics = program.train_epoch(state, hp, data, np.int32(1))
  assert np.all(np.isfinite(metrics["train_loss"]))
  np.testing.assert_array_equal(state.diverged, [True, True, False])
  after = np.asarray(state.params["w"])
  np.testing.assert_array_equal(after[:2], before[:2])  # frozen at the last finite values
  assert np.all(np.isfinite(after[2])) and not np.array_equal(after[2], before[2])


def test_training_learns_and_runs_pad_to_devices():
  config = small_config(seed=0, num_epochs=8, **{"model.init": "he", "noise.eta": 0.0})
  results = train([config], synthetic_data(n_train=1024))
  assert results[0]["test_accuracy"] > 0.5  # chance is 0.1
  assert results[0]["best_test_accuracy"] >= results[0]["test_accuracy"]


def test_inits_are_per_layer_stds():
  config = small_config(**{"model.init": "he"})
  np.testing.assert_allclose(mnist_mlp.init_stds(config),
                             np.sqrt(2.0 / np.array([784, 16, 16, 16])), rtol=1e-6)
  config = small_config(**{"model.init": "sussillo_abbott"})
  gain = np.sqrt(2.0) * np.exp(1.2 / (16 - 2.4))
  np.testing.assert_allclose(mnist_mlp.init_stds(config)[1], gain / 4.0, rtol=1e-6)
  assert np.all(mnist_mlp.init_stds(small_config(**{"model.init": "zero"})) == 0)
  np.testing.assert_allclose(mnist_mlp.init_stds(small_config()), 0.1)


def test_initial_weights_have_the_documented_per_layer_std():
  """Every model.init, measured on the weights the trainer initialises (20 x 50 network):
  each layer's sum of squares / std^2 lies within the chi-square(n) bounds of p = 1e-6."""
  chi2 = pytest.importorskip("scipy.stats").chi2
  config = sweep.apply_overrides(mnist_configs.get_config("quick"), {"batch_size": 32})
  gaussian = [init for init in mnist_mlp.INITS if init != "data_dependent"]
  configs = [sweep.apply_overrides(config, {"model.init": init, "seed": i})
             for i, init in enumerate(gaussian)]
  assert len({trainer.group_key(c, EXP) for c in configs}) == 1
  data = synthetic_data(n_train=32, n_test=1)
  program = trainer.build_program(EXP, config, data.num_train)
  hp = trainer.stack_hparams([trainer.run_hparams(c, EXP) for c in configs], len(configs))
  params = jax.device_get(program.init(hp, data.train).params)
  sizes = mnist_mlp.layer_sizes(config)
  fan_ins = np.array(sizes[:-1], np.float64)
  documented = {
      "zero": np.zeros_like(fan_ins),
      "simple": np.full_like(fan_ins, 0.1),
      "he": np.sqrt(2 / fan_ins),
      "sussillo_abbott": np.sqrt(2) * np.exp(1.2 / (np.maximum(fan_ins, 6) - 2.4))
                         / np.sqrt(fan_ins),
  }
  assert len(params) == len(sizes) - 1
  for run, init in enumerate(gaussian):
    pooled, pooled_n = 0.0, 0  # all layers together: resolves he vs sussillo_abbott (2.5%)
    for i, std in enumerate(documented[init]):
      kernel = params[f"layer_{i}"]["kernel"][run].astype(np.float64)
      assert kernel.shape == (sizes[i], sizes[i + 1])
      assert not np.any(params[f"layer_{i}"]["bias"][run])
      if std == 0:
        assert not np.any(kernel)
        continue
      n, ratio = kernel.size, np.sum(kernel**2) / std**2
      assert chi2.ppf(1e-6, n) < ratio < chi2.ppf(1 - 1e-6, n), (init, i)
      assert abs(kernel.mean()) < 5 * std / np.sqrt(n), (init, i)
      pooled, pooled_n = pooled + ratio, pooled_n + n
    if pooled_n:
      assert chi2.ppf(1e-6, pooled_n) < pooled < chi2.ppf(1 - 1e-6, pooled_n), init


def test_batch_larger_than_data_is_a_usage_error():
  data = EXP.load_data(small_config())
  with pytest.raises(UsageError, match="batch_size=5000 is larger than the training set "
                     r"\(4000 examples"):
    trainer.check_data(small_config(batch_size=5000), data)


def optimizer_config(**optimizer):
  """small_config with every declared default filled in, then ``optimizer.<k> = v``."""
  config = fields.complete(small_config(), {**trainer.FIELDS, **EXP.fields})
  for name, value in optimizer.items():
    config.optimizer[name] = value
  return config


def test_optimizer_eps_reaches_the_optimizer_and_is_refused_where_it_has_none():
  config = optimizer_config(name="adam", eps=1e-3)
  trainer.validate(config, EXP)
  params, grads = {"w": jnp.ones(3)}, {"w": jnp.full(3, 1e-3)}
  tx, reference = trainer.make_update(config, 0.1), optax.adam(0.1, eps=1e-3)
  got, _ = tx.update(grads, tx.init(params), params)
  want, _ = reference.update(grads, reference.init(params), params)
  np.testing.assert_array_equal(got["w"], want["w"])  # eps matters here: |g| = eps
  with pytest.raises(UsageError, match=r"optimizer.eps=0.001.*optax.sgd takes no eps"):
    trainer.validate(optimizer_config(name="sgd", eps=1e-3), EXP)


def test_optimizer_momentum_averages_the_optimizer_updates():
  """u_t = d_t + mu u_{t-1}, d_t the optimizer's own update (GRU4Rec's Adagrad with
  momentum); for sgd it equals optax.sgd's own momentum."""
  config = optimizer_config(name="adagrad", momentum=0.2)
  params = {"w": jnp.ones(2)}
  grads = [{"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 3.0])}]
  tx, adagrad = trainer.make_update(config, 0.1), optax.adagrad(0.1)
  state, plain = tx.init(params), adagrad.init(params)
  previous = np.zeros(2)
  for g in grads:
    u, state = tx.update(g, state, params)
    d, plain = adagrad.update(g, plain, params)
    previous = np.asarray(d["w"]) + 0.2 * previous
    np.testing.assert_allclose(u["w"], previous, rtol=1e-6)
  sgd = trainer.make_update(optimizer_config(name="sgd", momentum=0.9), 0.1)
  reference = optax.sgd(0.1, momentum=0.9)
  s1, s2 = sgd.init(params), reference.init(params)
  for g in grads:
    (u1, s1), (u2, s2) = sgd.update(g, s1, params), reference.update(g, s2, params)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
