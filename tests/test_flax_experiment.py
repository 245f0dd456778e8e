"""gradnoise.flax_experiment: linen and NNX models (BatchNorm, traced dropout) as experiments."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from gradnoise import fields, flax_experiment as fe, sweep, trainer
from gradnoise.checkpoint import BatchCheckpoints
from gradnoise.errors import UsageError

FEATURES, CLASSES = 8, 3


class LinenNet(nn.Module):
  """Dense -> BatchNorm -> ReLU -> traced dropout -> Dense, first layer scaled by a traced
  init scale."""

  init_scale: jax.Array
  dropout_rate: jax.Array

  @nn.compact
  def __call__(self, x, train):
    init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    x = nn.Dense(16, kernel_init=lambda *a: init(*a) * self.init_scale)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    x = fe.Dropout(self.dropout_rate)(nn.relu(x), deterministic=not train)
    return nn.Dense(CLASSES)(x)


class NnxNet(nnx.Module):
  """The same network in NNX, its hidden layers in a list (integer keys in the state)."""

  def __init__(self, init_scale, dropout_rate, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(FEATURES, 16, rngs=rngs),
                            nnx.Linear(16, CLASSES, rngs=rngs)])
    self.layers[0].kernel[...] = self.layers[0].kernel[...] * init_scale
    self.bn = nnx.BatchNorm(16, momentum=0.5, rngs=rngs)
    self.dropout = fe.NnxDropout(dropout_rate, rngs=rngs)

  def __call__(self, x):
    x = self.dropout(nnx.relu(self.bn(self.layers[0](x))))
    return self.layers[1](x)


FACTORIES = {
    "linen": lambda hp, config: LinenNet(hp["init_scale"], hp["dropout_rate"]),
    "nnx": lambda hp, config, rngs: NnxNet(hp["init_scale"], hp["dropout_rate"], rngs),
}
MODEL_FIELDS = {"model.init_scale": fields.number(0), "model.dropout_rate": fields.number(0, 1)}


def synthetic(n_train=128, n_test=40, regression=False) -> fe.ArrayData:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n_train + n_test, FEATURES)).astype(np.float32)
  y = x[:, :2] @ np.array([1.0, -2.0], np.float32) if regression else (
      (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5))
  return fe.ArrayData(x[:n_train], y[:n_train], {"test": (x[n_train:], y[n_train:])},
                      "synthetic")


def experiment(framework: str, **kwargs):
  return fe.supervised(
      f"test_{framework}", FACTORIES[framework], synthetic(), fields=MODEL_FIELDS,
      traced_fields=("model.init_scale", "model.dropout_rate"),
      hparams=lambda config: {"init_scale": config.model.init_scale,
                              "dropout_rate": config.model.dropout_rate}, **kwargs)


def base_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "experiment": "test", "seed": 0, "num_epochs": 2, "batch_size": 32,
      "optimizer": {"name": "sgd", "learning_rate": 0.1, "decay_every_epochs": 0,
                    "decay_factor": 1.0},
      "clip": {"norm": 10.0, "per_leaf": False},
      "noise": {"schedule": "annealed", "eta": 0.01, "gamma": 0.55, "std": 0.001},
      "model": {"init_scale": 1.0, "dropout_rate": 0.0},
      "train": {"runs_per_batch": 8, "eval_every_epochs": 1, "eval_batch_size": 16,
                "checkpoint_every_epochs": 0},
  })


def run_batch(exp, configs, data, epochs=2):
  """Trains ``configs`` as one vmapped batch: (program, hp, eval data, initial state as
  numpy, final state, eval metrics [R])."""
  program = trainer.build_program(exp, configs[0], data.num_train)
  hp = trainer.stack_hparams([trainer.run_hparams(c, exp) for c in configs], len(configs))
  evals = trainer.eval_batches(data, configs[0].train.eval_batch_size)
  state = program.init(hp, data.train)
  initial = jax.device_get(state)  # train_epoch donates the state
  for epoch in range(epochs):
    state, _ = program.train_epoch(state, hp, data.train, np.int32(epoch))
  metrics, _ = program.evaluate(state, hp, evals, np.int32(epochs - 1))
  return program, hp, evals, initial, state, metrics


@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_vmapped_runs_equal_runs_alone_and_batch_stats_are_carried(framework, tmp_path):
  exp = experiment(framework)
  settings = [(0, 0.0, 0.0, 1.0), (1, 0.01, 0.3, 0.5), (2, 0.3, 0.6, 2.0)]
  configs = [sweep.apply_overrides(base_config(), {
      "seed": seed, "noise.eta": eta, "model.dropout_rate": rate, "model.init_scale": scale})
             for seed, eta, rate, scale in settings]
  assert len({trainer.group_key(c, exp) for c in configs}) == 1  # numbers only: one program
  data = exp.load_data(configs[0])
  program, hp, evals, initial, state, metrics = run_batch(exp, configs, data)
  assert not np.any(state.diverged)

  stats = {k: v for k, v in state.extra.items() if k.startswith("batch_stats/")}
  assert len(stats) == 2  # mean and var of the one BatchNorm
  for name, value in stats.items():  # changed by training, separately per run
    assert value.shape == (3, 16)
    assert not np.allclose(value, initial.extra[name])
    assert not np.allclose(value[0], value[1])
  # Evaluation uses the trained statistics (and no dropout: it is deterministic).
  with_initial_stats, _ = program.evaluate(state._replace(extra=initial.extra), hp, evals,
                                           np.int32(1))
  assert not np.allclose(metrics["test_loss"], with_initial_stats["test_loss"])
  again, _ = program.evaluate(state, hp, evals, np.int32(1))
  np.testing.assert_array_equal(again["test_loss"], metrics["test_loss"])
  # The runs differ (seed, noise, dropout, init scale all reach the model).
  assert len(set(np.asarray(metrics["test_loss"]).tolist())) == 3

  *_, alone_state, alone = run_batch(exp, [configs[2]], data)
  np.testing.assert_allclose(alone["test_loss"][0], metrics["test_loss"][2], rtol=1e-5)
  np.testing.assert_allclose(alone["test_accuracy"][0], metrics["test_accuracy"][2], rtol=1e-6)
  for name in stats:
    np.testing.assert_allclose(alone_state.extra[name][0], state.extra[name][2], rtol=1e-5,
                               atol=1e-6)
  for a, b in zip(jax.tree.leaves(alone_state.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a[0], b[2], rtol=1e-5, atol=1e-6)

  # Parameters and statistics (NNX: integer list keys) are checkpointed with the run.
  checkpoints = BatchCheckpoints(str(tmp_path))
  checkpoints.save(2, state, {})
  restored = checkpoints.restore_latest(program.init(hp, data.train)).state
  assert jax.tree.structure(restored.params) == jax.tree.structure(state.params)
  for a, b in zip(jax.tree.leaves((restored.params, restored.extra)),
                  jax.tree.leaves((state.params, state.extra))):
    np.testing.assert_array_equal(a, b)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    return nn.Dense(1)(x)


def test_regression_learns():
  exp = fe.supervised("regression", lambda hp, config: Linear(), synthetic(regression=True),
                      task="regression")
  assert exp.summary_metric == "test_loss" and exp.state is not None
  config = sweep.apply_overrides(base_config(), {"noise.eta": 0.0})
  data = exp.load_data(config)
  assert data.train["y"].dtype == np.float32
  *_, initial, state, metrics = run_batch(exp, [config], data, epochs=5)
  assert state.extra == {}  # no BatchNorm: no per-run state
  assert metrics["test_loss"][0] < 0.05  # the targets are linear in x; variance 5


def test_dropout_layers_take_traced_rates():
  x = jnp.ones((4000,))
  rates = jnp.array([0.0, 0.25, 0.5])
  out = jax.vmap(lambda r: fe.dropout(x, r, jax.random.key(0)))(rates)
  np.testing.assert_array_equal(out[0], x)
  for r, o in zip(rates[1:], out[1:]):
    np.testing.assert_allclose(np.unique(o), [0.0, 1 / (1 - float(r))], rtol=1e-6)
    assert abs(np.mean(o == 0) - float(r)) < 0.03

  layer = fe.Dropout(rates[2])
  y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert abs(np.mean(y == 0) - 0.5) < 0.03
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)

  module = fe.NnxDropout(rates[1], rngs=nnx.Rngs(0))
  assert abs(np.mean(module(x) == 0) - 0.25) < 0.03
  module.eval()
  np.testing.assert_array_equal(module(x), x)


def test_tfds_data_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  exp = fe.supervised("tfds", lambda hp, config: nn.Dense(10),
                      fe.TfdsData("mnist", eval_splits={"test": "test[:50%]"}))
  with tfds.testing.mock_data(num_examples=12):
    data = exp.load_data(base_config())
  assert data.train["x"].shape == (12, 28, 28, 1) and data.train["x"].dtype == np.float32
  assert 0 <= data.train["x"].min() and data.train["x"].max() <= 1
  assert data.train["y"].dtype == np.int32 and data.evals["test"]["y"].shape[0] > 0
  assert data.description.startswith("tfds mnist (train 12, test[:50%] ")
  with tfds.testing.mock_data(num_examples=2), pytest.raises(UsageError, match="no_such"):
    fe.TfdsData("no_such_dataset_xyz").load()


def test_imports_stay_light():
  code = ("import sys, gradnoise; assert 'flax' not in sys.modules, 'flax'; "
          "import gradnoise.flax_experiment; "
          "assert 'tensorflow_datasets' not in sys.modules, 'tfds'")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_arguments():
  with pytest.raises(ValueError, match="task='ranking'"):
    fe.supervised("x", FACTORIES["linen"], synthetic(), task="ranking")
  with pytest.raises(ValueError, match="model takes 1 required positional parameters"):
    fe.supervised("x", lambda hp: None, synthetic())
  # Keyword-only and defaulted parameters do not count: this is a linen factory.
  fe.supervised("x", lambda hp, config, *, extra=1: FACTORIES["linen"](hp, config), synthetic())
  with pytest.raises(UsageError, match="split test has 3 inputs but 2 targets"):
    fe.ArrayData(np.zeros((4, 2)), np.zeros(4), {"test": (np.zeros((3, 2)), np.zeros(2))}, "d")


@pytest.mark.parametrize("labels, message", [
    (np.zeros((4, 3)), "classification needs integer class ids of shape \\[N\\]"),
    (np.array([0.5, 1.0, 2.0, 1.0]), "classification needs integer class ids"),
    (np.array(["a", "b", "a", "b"]), "not one-hot, not strings"),
])
def test_bad_labels_are_one_usage_error(labels, message):
  data = fe.ArrayData(np.zeros((4, 2), np.float32), labels, {}, "bad labels")
  experiment = fe.supervised("x", FACTORIES["linen"], data)
  with pytest.raises(UsageError, match=message):
    experiment.load_data(None)


def test_data_of_the_wrong_type_is_one_usage_error():
  experiment = fe.supervised("x", FACTORIES["linen"], lambda config: ([1], [2]))
  with pytest.raises(UsageError, match="its data gave tuple; accepted: "):
    experiment.load_data(None)
