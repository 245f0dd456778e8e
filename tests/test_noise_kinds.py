"""noise.kind through the trainer: fields, compile groups, wiring and the transform contract
(zero strength, vmap, no recompilation, checkpoints) on the trainer's path, weight noise.

The statistics of each gradient-noise transform are tested on the transforms themselves
(tests/test_noise_family.py); here the trainer's stages are checked to be those transforms,
and what exists only in the trainer (weight noise, SGLD through its optimizer) is measured.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import gradnoise
from configs import mnist_mlp as mnist_configs
from experiments import mnist_mlp
from gradnoise import experiment, fields, sweep, trainer
from gradnoise.checkpoint import BatchCheckpoints

EXP = mnist_mlp.EXPERIMENT
# kind -> (the field of its strength, a nonzero strength), plus its other fields.
STRENGTHS = {"gaussian": ("noise.eta", 0.01), "langevin": ("noise.temperature", 1e-4),
             "anticorrelated": ("noise.sigma", 0.5), "multiplicative": ("noise.sigma", 0.5),
             "relative": ("noise.sigma", 0.5), "perturbed": ("noise.radius", 1.0),
             "weight": ("noise.sigma", 0.05)}
OTHER = {"perturbed": {"noise.grad_threshold": 10.0, "noise.wait": 1},
         "relative": {"noise.relative_to": "params"}}
KINDS = list(STRENGTHS)


def config(kind="gaussian", strength=0.0, **overrides):
  """A tiny MLP (784 -> 8 -> 10, batch 16, clip 1) with ``kind`` at ``strength``."""
  base = mnist_configs.get_config("quick")
  base.model.depth, base.model.width = 1, 8
  base.num_epochs, base.batch_size, base.clip.norm = 2, 16, 1.0
  base = fields.complete(base, {**trainer.FIELDS, **EXP.fields})
  name, _ = STRENGTHS[kind]
  no_gaussian_noise = {"noise.eta": 0.0}  # replaced by the strength for gaussian
  return sweep.apply_overrides(base, {"noise.kind": kind, **no_gaussian_noise, name: strength,
                                      **OTHER.get(kind, {}), **overrides})


def data():
  rng = np.random.default_rng(0)
  x = rng.random((64, 784), dtype=np.float32)
  y = rng.integers(0, 10, 64).astype(np.int32)
  return experiment.Dataset({"x": x, "y": y}, {"test": {"x": x[:8], "y": y[:8]}}, "random")


DATA = data()


@functools.lru_cache(maxsize=None)
def program(kind, runs):
  """The compiled program of ``kind`` for ``runs`` runs at once (cached: one compile)."""
  del runs  # part of the cache key: the programs are traced per batch shape
  return trainer.build_program(EXP, config(kind), DATA.num_train)


def hparams(configs, exp=EXP):
  return trainer.stack_hparams([trainer.run_hparams(c, exp) for c in configs], len(configs))


def train(kind, configs, epochs=2, state=None, start=0):
  """Params and state of ``configs`` (one batch) after ``epochs`` epochs."""
  prog, hp = program(kind, len(configs)), hparams(configs)
  state = prog.init(hp, DATA.train) if state is None else state
  for epoch in range(start, epochs):
    state, _ = prog.train_epoch(state, hp, DATA.train, np.int32(epoch))
  return state


def leaves(tree, run=None):
  """The leaves of ``tree`` (of run ``run``) as numpy arrays, PRNG keys as their data."""
  def plain(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x if run is None else x[run])
  return [plain(x) for x in jax.tree.leaves(tree)]


def test_kind_defaults_to_gaussian_and_every_new_field_has_a_default():
  assert trainer.FIELDS["noise.kind"].default == "gaussian"
  for name in ("noise.temperature", "noise.sigma", "noise.relative_to", "noise.radius",
               "noise.grad_threshold", "noise.wait", "train.diagnostics",
               "train.diagnostics_per_leaf"):
    assert trainer.FIELDS[name].default is not fields.REQUIRED, name
  legacy = mnist_configs.get_config("quick")  # no noise.kind: the gaussian kind
  assert trainer.field_value(legacy, "noise.kind") == "gaussian"
  assert trainer.run_hparams(legacy, EXP)["sigma"] == 0


@pytest.mark.parametrize("kind, used", [
    ("gaussian", {"noise.eta", "noise.gamma", "noise.schedule"}),
    ("langevin", {"noise.temperature"}), ("anticorrelated", {"noise.sigma"}),
    ("multiplicative", {"noise.sigma"}), ("relative", {"noise.sigma", "noise.relative_to"}),
    ("perturbed", {"noise.radius", "noise.grad_threshold", "noise.wait"}),
    ("weight", {"noise.sigma"}),
])
def test_unused_fields_name_the_fields_a_kind_does_not_use(kind, used):
  unused = trainer.unused_fields(config(kind))
  noise_fields = {n for n in trainer.FIELDS if n.startswith("noise.")} - {"noise.kind"}
  assert {n for n in unused if n.startswith("noise.")} == noise_fields - used
  if kind != "gaussian":
    assert f"noise.kind={kind!r}" in unused["noise.eta"]
  assert "train.diagnostics_per_leaf" not in unused
  assert "train.diagnostics_per_leaf" in trainer.unused_fields(
      sweep.apply_overrides(config(kind), {"train.diagnostics": False}))


def test_kind_is_a_compile_axis_and_strengths_are_traced():
  keys = {kind: trainer.group_key(config(kind, s), EXP) for kind, (_, s) in STRENGTHS.items()}
  assert len(set(keys.values())) == len(KINDS)
  for kind, (_, s) in STRENGTHS.items():
    assert trainer.group_key(config(kind, 2 * s), EXP) == keys[kind]
  # Static fields of a kind are compile axes too.
  assert trainer.group_key(config("perturbed", 1.0, **{"noise.wait": 5}), EXP) != keys["perturbed"]
  assert trainer.group_key(config("perturbed", 1.0, **{"noise.grad_threshold": 3.0}),
                           EXP) == keys["perturbed"]


def expected_transform(kind, hp, key):
  """The documented transform of ``kind`` at the strengths of ``hp`` (see STRENGTHS)."""
  return {
      "gaussian": lambda: gradnoise.add_gradient_noise(hp["eta"], hp["gamma"], key),
      "langevin": lambda: gradnoise.add_langevin_noise(hp["learning_rate"],
                                                       hp["temperature"], key),
      "anticorrelated": lambda: gradnoise.add_anticorrelated_noise(hp["sigma"], key),
      "multiplicative": lambda: gradnoise.add_multiplicative_noise(hp["sigma"], key),
      "relative": lambda: gradnoise.add_relative_noise(hp["sigma"], key, relative_to="params"),
      "perturbed": lambda: gradnoise.add_pgd_perturbation(hp["radius"], 10.0, 1, key),
      "weight": optax.identity,  # the trainer perturbs the parameters instead
  }[kind]()


@pytest.mark.parametrize("kind", KINDS)
def test_noise_stage_is_the_kind_transform(kind):
  """The trainer's noise stage updates exactly as the documented transform (3 updates)."""
  c = config(kind, STRENGTHS[kind][1])
  hp = {k: jnp.asarray(v) for k, v in trainer.run_hparams(c, EXP).items()}
  key = jax.random.key(3)
  group = experiment.GroupConfig(c, trainer.traced_fields(EXP), {})
  stage = trainer.make_stages(group, hp, key, steps_per_epoch=4).noise
  expected = expected_transform(kind, hp, key)
  params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.ones(4)}
  grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
  state, reference_state = stage.init(params), expected.init(params)
  for _ in range(3):
    out, state = stage.update(grads, state, params)
    want, reference_state = expected.update(grads, reference_state, params)
    for a, b in zip(leaves(out), leaves(want)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_strength_trains_bit_for_bit_as_no_noise(kind):
  reference = train("gaussian", [config("gaussian", 0.0)])
  state = train(kind, [config(kind, 0.0)])
  for a, b in zip(leaves(state.params), leaves(reference.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_runs_vmapped_over_strengths_equal_each_alone(kind):
  _, s = STRENGTHS[kind]
  configs = [config(kind, 0.0, seed=1), config(kind, s, seed=1), config(kind, 3 * s, seed=2)]
  together = train(kind, configs)
  for run in (1, 2):
    alone = train(kind, [configs[run]])
    for a, b in zip(leaves(together.params, run), leaves(alone.params, 0)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(together.params, 0),
                                                       leaves(together.params, 1)))


class CompileCounter:
  """Counts XLA backend compilations while active (jax.monitoring events)."""

  def __init__(self):
    self.count, self.active = 0, False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    if self.active and "backend_compile" in event:
      self.count += 1


COMPILES = CompileCounter()


@pytest.mark.parametrize("kind", KINDS)
def test_changing_a_strength_does_not_recompile(kind):
  name, s = STRENGTHS[kind]
  train(kind, [config(kind, s)], epochs=1)  # compiled here
  COMPILES.active, COMPILES.count = True, 0
  try:
    others = [config(kind, 2 * s, seed=5)]
    if kind == "perturbed":
      others = [config(kind, 2 * s, seed=5, **{"noise.grad_threshold": 0.5})]
    train(kind, others, epochs=1)
  finally:
    COMPILES.active = False
  assert COMPILES.count == 0


@pytest.mark.parametrize("kind", KINDS)
def test_restored_checkpoint_draws_the_same_noise(kind, tmp_path):
  _, s = STRENGTHS[kind]
  configs = [config(kind, s, seed=4), config(kind, 2 * s, seed=5), config(kind, s, seed=6)]
  straight = train(kind, configs, epochs=3)
  checkpoints = BatchCheckpoints(str(tmp_path / "ckpt"))
  checkpoints.save(1, train(kind, configs, epochs=1), {})
  fresh = program(kind, len(configs)).init(hparams(configs), DATA.train)
  epoch, restored, _ = checkpoints.restore_latest(fresh)
  resumed = train(kind, configs, epochs=3, state=restored, start=epoch)
  for a, b in zip(leaves(resumed), leaves(straight)):
    np.testing.assert_array_equal(a, b)


def test_weight_noise_is_gaussian_per_step_and_a_function_of_seed_and_step():
  sigma = 0.3
  params = {"w": jnp.full((300, 200), 2.0), "b": jnp.zeros(500), "i": jnp.arange(3)}
  hp = {"seed": jnp.int32(9), "sigma": jnp.float32(sigma)}
  draws = [trainer.weight_noise(params, hp, jnp.int32(t)) for t in (0, 1)]
  np.testing.assert_array_equal(draws[1]["i"], params["i"])
  np.testing.assert_array_equal(trainer.weight_noise(params, hp, jnp.int32(1))["w"],
                                draws[1]["w"])
  noise = [np.concatenate([np.ravel(d["w"] - 2.0), np.ravel(d["b"])]).astype(np.float64)
           for d in draws]
  n = noise[0].size
  for z in noise:
    assert abs(z.mean()) < 5 * sigma / np.sqrt(n)
    ratio = np.sum(z**2) / sigma**2
    assert stats.chi2.ppf(1e-6, n) < ratio < stats.chi2.ppf(1 - 1e-6, n)
  assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 5 / np.sqrt(n)  # fresh each step
  same = trainer.weight_noise(params, {**hp, "sigma": jnp.float32(0.0)}, jnp.int32(0))
  for a, b in zip(leaves(same), leaves(params)):
    np.testing.assert_array_equal(a, b)


def quadratic_loss(params, batch, key, hp, config):
  """0.5 ||w||^2 (``hp["zero_grad"]`` 0) or a constant (1): gradient w or 0."""
  w = params["w"]
  return jnp.where(hp["zero_grad"] > 0, 0.0, 0.5) * jnp.sum(w**2), {}


QUADRATIC = dataclasses.replace(
    EXP, name="quadratic", traced_fields=(),
    hparams=lambda config: {"zero_grad": config.zero_grad},
    init_params=lambda key, batch, hp, config: {"w": jnp.full(20_000, 3.0)},
    loss_fn=quadratic_loss, eval_fn=lambda params, batch, hp, config: {})


def quadratic_step(kind, strength, zero_grad, lr=0.1):
  """Params before and after one trainer step on QUADRATIC (no clipping)."""
  c = config(kind, strength, batch_size=8, **{"optimizer.learning_rate": lr,
                                             "clip.norm": None})
  with c.unlocked():
    c.zero_grad = zero_grad
  prog = trainer.build_program(QUADRATIC, c, num_train=8)
  batch = {"y": np.zeros(8, np.float32)}
  hp = hparams([c], QUADRATIC)
  state = prog.init(hp, batch)
  before = np.asarray(state.params["w"][0], np.float64)  # train_epoch donates the state
  after, _ = prog.train_epoch(state, hp, batch, np.int32(0))
  return before, np.asarray(after.params["w"][0], np.float64), hp


def test_weight_noise_gradient_is_taken_at_the_perturbed_parameters():
  """w' = w - lr grad(w + sigma xi) = w - lr (w + sigma xi) for 0.5 ||w||^2."""
  sigma, lr = 0.2, 0.1
  before, after, hp = quadratic_step("weight", sigma, zero_grad=0, lr=lr)
  hp0 = {k: v[0] for k, v in hp.items()}
  perturbed = np.asarray(trainer.weight_noise({"w": jnp.asarray(before, jnp.float32)}, hp0,
                                              jnp.int32(0))["w"], np.float64)
  np.testing.assert_allclose(after, before - lr * perturbed, rtol=1e-6, atol=1e-6)
  assert np.std(perturbed - before) == pytest.approx(sigma, rel=0.05)


def test_sgld_parameter_noise_has_variance_2_lr_t_through_the_trainer():
  temperature, lr = 1e-3, 0.05
  before, after, _ = quadratic_step("langevin", temperature, zero_grad=1, lr=lr)
  step = after - before  # zero gradient: the step is -lr times the noise
  n = step.size
  ratio = np.sum(step**2) / (2 * lr * temperature)
  assert stats.chi2.ppf(1e-6, n) < ratio < stats.chi2.ppf(1 - 1e-6, n)
