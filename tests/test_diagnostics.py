"""Per-epoch diagnostics (gradient norms before and after clipping, clipped fraction, noise
norm, noise-to-gradient ratio): against a hand computation on a two-layer model, their
0 / 0 rules, results unchanged by them, and the files they land in."""

import csv
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradnoise
from configs import mnist_mlp as mnist_configs
from experiments import mnist_mlp
from gradnoise import experiment, fields, launch, sweep, trainer
from gradnoise import workdir as workdir_lib

NAMES = ("train_grad_norm", "train_grad_norm_max", "train_clipped_grad_norm",
         "train_clipped_grad_norm_max", "train_clipped_fraction", "train_noise_norm",
         "train_noise_norm_max", "train_noise_to_grad", "train_noise_to_grad_max")
N, BATCH, IN, HIDDEN, OUT = 16, 4, 5, 3, 2  # 4 steps per epoch


def two_layer_loss(params, batch, key, hp, config):
  """0.5 mean_b ||tanh(x W1) W2 - y||^2."""
  out = jnp.tanh(batch["x"] @ params["w1"]) @ params["w2"]
  return 0.5 * jnp.mean(jnp.sum((out - batch["y"])**2, axis=1)), {}


def two_layer_init(key, batch, hp, config):
  return {"w1": jax.random.normal(jax.random.fold_in(key, 1), (IN, HIDDEN)),
          "w2": jax.random.normal(jax.random.fold_in(key, 2), (HIDDEN, OUT))}


TWO_LAYER = dataclasses.replace(
    mnist_mlp.EXPERIMENT, name="two_layer", traced_fields=(), hparams=lambda config: {},
    init_params=two_layer_init, loss_fn=two_layer_loss,
    eval_fn=lambda params, batch, hp, config: {})
DATA = {"x": np.random.default_rng(0).normal(size=(N, IN)).astype(np.float32),
        "y": np.random.default_rng(1).normal(size=(N, OUT)).astype(np.float32)}


def config(**overrides):
  base = mnist_configs.get_config("quick")
  base = fields.complete(base, {**trainer.FIELDS, **mnist_mlp.EXPERIMENT.fields})
  base = sweep.apply_overrides(base, {
      "batch_size": BATCH, "clip.norm": 1.5, "noise.schedule": "constant",
      "noise.std": 0.2, "optimizer.learning_rate": 0.5, "train.diagnostics_per_leaf": True})
  return sweep.apply_overrides(base, overrides)


def train(c, epochs=2):
  """State and per-epoch metrics (run 0) of ``c`` trained for ``epochs`` epochs."""
  program = trainer.build_program(TWO_LAYER, c, N)
  hp = trainer.stack_hparams([trainer.run_hparams(c, TWO_LAYER)], 1)
  state = program.init(hp, DATA)
  history = []
  for epoch in range(epochs):
    state, metrics = program.train_epoch(state, hp, DATA, np.int32(epoch))
    history.append({k: float(v[0]) for k, v in metrics.items()})
  return state, history


def hand_gradients(w1, w2, x, y):
  """Backpropagation of two_layer_loss by hand, in float64."""
  h = np.tanh(x @ w1)
  d_out = (h @ w2 - y) / len(x)
  return {"w1": x.T @ ((d_out @ w2.T) * (1 - h**2)), "w2": h.T @ d_out}


def hand_epochs(c, epochs=2, every=1):
  """Per epoch, the diagnostics computed by hand (float64) with the trainer's init,
  batches and noise draws (the noise of update t: std times the unit normals that
  add_gradient_noise draws for the run's noise key at t), over the steps of the epoch
  whose index is a multiple of ``every``."""
  hp = {k: jnp.asarray(v) for k, v in trainer.run_hparams(c, TWO_LAYER).items()}
  params = {k: np.asarray(v, np.float64) for k, v in two_layer_init(
      trainer._stream(hp, trainer.STREAM_INIT), None, hp, None).items()}
  noise_tx = gradnoise.add_gradient_noise(
      schedule=gradnoise.constant_std(c.noise.std),
      key=trainer._stream(hp, trainer.STREAM_NOISE))
  zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in params.items()}
  noise_state = noise_tx.init(zeros)
  norm = lambda tree: np.sqrt(sum(np.sum(v**2) for v in tree.values()))
  out = []
  for epoch in range(epochs):
    order = np.asarray(trainer.batch_order(hp, epoch, N, N // BATCH, BATCH))
    steps = []
    for idx in order:
      g = hand_gradients(params["w1"], params["w2"], DATA["x"][idx].astype(np.float64),
                         DATA["y"][idx].astype(np.float64))
      scale = min(1.0, c.clip.norm / norm(g))
      clipped = {k: v * scale for k, v in g.items()}
      noise, noise_state = noise_tx.update(zeros, noise_state)
      noise = {k: np.asarray(v, np.float64) for k, v in noise.items()}
      params = {k: params[k] - c.optimizer.learning_rate * (clipped[k] + noise[k])
                for k in params}
      step = {"grad_norm": norm(g), "clipped_grad_norm": norm(clipped),
              "clipped_fraction": float(scale < 1), "noise_norm": norm(noise),
              "noise_to_grad": norm(noise) / norm(clipped)}
      for k in params:
        step.update({f"grad_norm/{k}": np.linalg.norm(g[k]),
                     f"clipped_grad_norm/{k}": np.linalg.norm(clipped[k]),
                     f"noise_norm/{k}": np.linalg.norm(noise[k]),
                     f"noise_to_grad/{k}": np.linalg.norm(noise[k]) / np.linalg.norm(clipped[k])})
      steps.append(step)
    epoch_metrics = {}
    for name in steps[0]:
      values = [s[name] for i, s in enumerate(steps) if i % every == 0]
      base, slash, leaf = name.partition("/")
      epoch_metrics[f"train_{name}"] = np.mean(values)
      if base != "clipped_fraction":
        epoch_metrics[f"train_{base}_max{slash}{leaf}"] = np.max(values)
    out.append(epoch_metrics)
  return out


def test_diagnostics_match_a_hand_computation_on_a_two_layer_model():
  c = config()
  _, history = train(c)
  expected = hand_epochs(c)
  for got, want in zip(history, expected):
    assert set(NAMES) <= set(got)
    for name, value in want.items():
      assert got[name] == pytest.approx(value, rel=1e-4), name
  fractions = [h["train_clipped_fraction"] for h in history]
  assert 0 < min(fractions) and max(fractions) < 1  # both cases occur (4 steps an epoch)


@pytest.mark.parametrize("every", [2, 3, 5])
def test_diagnostics_every_k_steps_are_those_steps_by_hand(every):
  # 4 steps an epoch: k = 2 diagnoses steps 0 and 2, k = 3 steps 0 and 3, k = 5 step 0.
  c = config(**{"train.diagnostics_every": every})
  _, history = train(c)
  for got, want in zip(history, hand_epochs(c, every=every)):
    assert set(NAMES) <= set(got) and "train__diagnosed" not in got
    for name, value in want.items():
      assert got[name] == pytest.approx(value, rel=1e-4), name


@pytest.mark.parametrize("kind", ["gaussian", "relative", "perturbed", "weight"])
def test_parameters_are_bit_identical_with_diagnostics_every_k(kind):
  states = [train(config(**{"noise.kind": kind, "train.diagnostics": on,
                            "train.diagnostics_every": every, **STRENGTHS[kind]}))[0]
            for on, every in [(False, 1), (True, 3)]]
  for a, b in zip(jax.tree.leaves(states[1].params), jax.tree.leaves(states[0].params)):
    np.testing.assert_array_equal(a, b)


def test_zero_over_zero_and_clipping_rules():
  zero = {"w": jnp.zeros(3)}
  d = trainer.diagnostics(zero, zero, zero, per_leaf=False)
  assert float(d["noise_to_grad"]) == 0 and float(d["clipped_fraction"]) == 0
  d = trainer.diagnostics(zero, zero, {"w": jnp.ones(3)}, per_leaf=False)
  assert float(d["noise_to_grad"]) == np.inf and float(d["noise_norm"]) == pytest.approx(3**0.5)
  g = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
  clipped = {"w": jnp.array([0.6, 0.8]), "b": jnp.array([0.0])}
  d = trainer.diagnostics(g, clipped, jax.tree.map(jnp.zeros_like, g), per_leaf=True)
  assert float(d["grad_norm"]) == 5 and float(d["clipped_grad_norm"]) == pytest.approx(1)
  assert float(d["clipped_fraction"]) == 1 and float(d["noise_to_grad/w"]) == 0
  assert set(d) == {"grad_norm", "clipped_grad_norm", "noise_norm", "noise_to_grad",
                    "clipped_fraction"} | {f"{m}/{leaf}" for leaf in ("b", "w") for m in (
                        "grad_norm", "clipped_grad_norm", "noise_norm", "noise_to_grad")}


@pytest.mark.parametrize("as_dots", [False, True])
def test_sums_of_squares_over_mixed_leaves_match_numpy(as_dots):
  """Leaves of shared and distinct shapes, dtypes (bfloat16, float32, complex64) and a
  scalar, from three trees: each leaf's sum of squares as numpy computes it."""
  rng = np.random.default_rng(0)
  def tree(k):
    return [jnp.asarray(rng.normal(size=(3, 4)) * k, jnp.float32),
            jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            jnp.asarray(rng.normal(size=5) + 1j * rng.normal(size=5), jnp.complex64),
            jnp.asarray(rng.normal(size=(3, 4)), jnp.bfloat16),
            jnp.asarray(2.5 * k, jnp.float32)]
  trees = [tree(k) for k in (1.0, 2.0, 3.0)]
  got = trainer._sum_squares(trees, as_dots)
  for leaves, sums in zip(trees, got):
    for x, total in zip(leaves, sums):
      want = np.sum(np.abs(np.asarray(x, np.complex128 if jnp.iscomplexobj(x) else np.float64))**2)
      assert total.dtype == jnp.float32
      assert float(total) == pytest.approx(want, rel=1e-6)


def test_a_tree_without_inexact_leaves_gives_zero_diagnostics():
  ints = {"n": jnp.arange(3)}
  d = trainer.diagnostics(ints, ints, ints, per_leaf=False)
  assert {k: float(v) for k, v in d.items()} == dict.fromkeys(
      ("grad_norm", "clipped_grad_norm", "noise_norm", "noise_to_grad", "clipped_fraction"), 0.0)


def test_weight_noise_diagnostic_is_the_parameter_perturbation():
  c = config(**{"noise.kind": "weight", "noise.sigma": 0.1, "clip.norm": None})
  _, history = train(c, epochs=1)
  hp = {k: jnp.asarray(v) for k, v in trainer.run_hparams(c, TWO_LAYER).items()}
  params = {k: jnp.zeros((IN, HIDDEN) if k == "w1" else (HIDDEN, OUT)) for k in ("w1", "w2")}
  norms = [np.sqrt(sum(np.sum(np.square(np.asarray(v, np.float64)))
                       for v in jax.tree.leaves(trainer.weight_noise(params, hp, jnp.int32(t)))))
           for t in range(N // BATCH)]
  assert history[0]["train_noise_norm"] == pytest.approx(np.mean(norms), rel=1e-5)
  assert history[0]["train_noise_norm_max"] == pytest.approx(np.max(norms), rel=1e-5)
  assert history[0]["train_clipped_fraction"] == 0


STRENGTHS = {"gaussian": {}, "langevin": {"noise.temperature": 1e-3},
             "anticorrelated": {"noise.sigma": 0.3}, "multiplicative": {"noise.sigma": 0.5},
             "relative": {"noise.sigma": 0.5}, "perturbed": {"noise.radius": 0.5, "noise.wait": 1},
             "weight": {"noise.sigma": 0.1}}


@pytest.mark.parametrize("kind", list(STRENGTHS))
def test_parameters_are_bit_identical_with_diagnostics_on_or_off(kind):
  settings = [(False, False), (True, False)] + [(True, True)] * (kind == "gaussian")
  states = [train(config(**{"noise.kind": kind, "train.diagnostics": on,
                            "train.diagnostics_per_leaf": per_leaf, **STRENGTHS[kind]}))[0]
            for on, per_leaf in settings]
  for state in states[1:]:
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(states[0].params)):
      np.testing.assert_array_equal(a, b)


def test_stages_one_by_one_equal_the_chained_optimizer():
  c = config()
  hp = {k: jnp.asarray(v) for k, v in trainer.run_hparams(c, TWO_LAYER).items()}
  group = experiment.GroupConfig(c, trainer.traced_fields(TWO_LAYER), {})
  key = jax.random.key(0)
  stages = trainer.make_stages(group, hp, key, 4)
  chained = trainer.make_optimizer(group, hp, key, 4)
  params = two_layer_init(key, None, hp, None)
  grads = jax.tree.map(lambda p: 3 * jnp.sin(p), params)
  state = chained.init(params)
  updates, _ = jax.jit(chained.update)(grads, state, params)

  @jax.jit
  def one_by_one(grads, state, params):
    for stage, s in zip(stages, state):
      grads, _ = stage.update(grads, s, params)
    return grads

  for a, b in zip(jax.tree.leaves(one_by_one(grads, state, params)), jax.tree.leaves(updates)):
    np.testing.assert_array_equal(a, b)


def test_diagnostics_off_logs_none():
  _, history = train(config(**{"train.diagnostics": False}), epochs=1)
  assert not set(NAMES) & set(history[0]) and "train_loss" in history[0]


def test_diagnostics_land_in_metrics_results_and_tensorboard(tmp_path):
  workdir = tmp_path / "wd"
  launch.run("configs/mnist_mlp.py:quick", str(workdir), sweep=False, out=open(os.devnull, "w"),
             overrides={"model.depth": 1, "model.width": 8, "num_epochs": 1,
                        "batch_size": 1000, "noise.kind": "multiplicative", "noise.sigma": 0.5})
  rows = [json.loads(line) for line in open(workdir / workdir_lib.METRICS_FILE)]
  assert set(NAMES) <= set(rows[0])
  assert rows[0]["train_noise_to_grad"] == pytest.approx(0.5, rel=0.1)  # ratio = sigma
  with open(workdir / workdir_lib.RESULTS_FILE) as f:
    header = next(csv.reader(f))
  assert set(NAMES) <= set(header)
  assert os.listdir(workdir / workdir_lib.TENSORBOARD_DIR / "run_0")
