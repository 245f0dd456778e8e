"""Neural GPU experiment: task generator, CGRU gate, curriculum, relaxation, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradnoise
from configs import neural_gpu as configs
from experiments import binary_tasks as bt
from experiments import neural_gpu as ng
from gradnoise import sweep, trainer
from gradnoise.errors import UsageError


def gc(config):
  """The config as the compiled program's functions see it."""
  return trainer.group_config(config, ng.EXPERIMENT)


def small_config(**overrides):
  config = configs.get_config("table6_small")
  config.model.maps, config.relax.copies, config.model.dropout_rate = 8, 3, 0.0
  config.data.train_bits, config.data.test_bits, config.data.pool_size = 4, 6, 64
  config.data.test_examples = 16
  return sweep.apply_overrides(config, overrides)


def run_hp(config, **extra):
  hp = {k: jnp.asarray(v) for k, v in ng.hparams(config).items()}
  return {**hp, **ng.init_state(None, None, hp, gc(config)), **extra}


@pytest.mark.parametrize("task", bt.TASKS)
def test_generator_matches_python_integers(task):
  rng = np.random.default_rng(1)
  op = (lambda a, b: a + b) if task == "add" else (lambda a, b: a * b)
  for k in (1, 2, 5, 13, 40):
    a = rng.integers(0, 2, (50, k))
    a[0], a[1] = 1, 0  # all carries; zero operand
    b = rng.integers(0, 2, (50, k))
    b[0] = 1
    inputs, targets = bt.encode(task, a, b, length=bt.sequence_length(k) + 3)
    for i in range(50):
      x, y = bt.decode_number(inputs[i]), bt.decode_number(inputs[i, k + 1:])
      assert (x, y) == (int("".join(map(str, a[i][::-1])), 2),
                        int("".join(map(str, b[i][::-1])), 2))
      assert inputs[i, k] == bt.OP and np.all(inputs[i, 2 * k + 1:] == bt.PAD)
      result = op(x, y)
      bits = max(1, result.bit_length())  # no leading zeros; 0 is one bit
      assert bt.decode_number(targets[i]) == result
      assert np.all(np.isin(targets[i, :bits], (bt.BIT0, bt.BIT1)))
      assert np.all(targets[i, bits:] == bt.PAD)


def test_training_pool_holds_every_operand_length():
  inputs, targets = bt.training_pool("mul", 5, 20, np.random.default_rng(0))
  assert inputs.shape == targets.shape == (20, 5, 11) and inputs.dtype == np.int8
  lengths = np.sum(inputs != bt.PAD, axis=2)
  np.testing.assert_array_equal(lengths, np.broadcast_to(2 * np.arange(1, 6) + 1, (20, 5)))


def test_gate_cutoff():
  x = jnp.array([-20.0, -np.log(11.0), 0.0, 1.0, np.log(11.0), 2.5, 20.0])
  y = np.asarray(ng.gate_cutoff(x))
  np.testing.assert_allclose(y, [0, 0, 0.5, 1.2 / (1 + np.exp(-1)) - 0.1, 1, 1, 1], atol=1e-6)
  assert y[0] == 0.0 and y[-1] == 1.0  # saturates exactly (sec. 2: gates can be 0 or 1)


def test_curriculum_draws_and_advances():
  bits = np.asarray(ng.sample_bits(jax.random.key(0), 20000, jnp.int32(3), 10))
  assert bits.min() == 1 and bits.max() == 10
  # 75% within the current length, and a quarter of the rest may still land there.
  assert abs(np.mean(bits <= 3) - (0.75 + 0.25 * 0.3)) < 0.02

  config = small_config(**{"curriculum.window": 3, "curriculum.threshold": 0.15,
                           "relax.pull": 0.05, "relax.pull_max": 0.055})
  hp = run_hp(config)
  extra = ng.init_state(None, None, hp, gc(config))
  good = {"curriculum_errors": jnp.float32(1.0), "curriculum_examples": jnp.float32(32.0)}
  bad = {"curriculum_errors": jnp.float32(8.0), "curriculum_examples": jnp.float32(32.0)}
  history = []
  for aux in [good] * 3 + [bad] * 3 + [good] * 6:
    extra = ng.after_step(extra, aux, hp, gc(config))
    history.append((int(extra["bits"]), round(float(extra["pull"]), 4), bool(extra["averaged"])))
  assert history == [
      (2, 0.05, False), (2, 0.05, False), (3, 0.06, False),  # window 1: advance, pull x1.2
      (3, 0.06, False), (3, 0.06, False), (3, 0.06, False),  # window 2: 25% errors, stay
      (3, 0.06, False), (3, 0.06, False), (4, 0.06, True),   # pull saturated: average
      (4, 0.06, True), (4, 0.06, True), (4, 0.06, True)]     # capped at train_bits = 4


def reference_logits(params, symbols, config):
  """The paper's model on one unpadded example: n steps on an n-wide state, step i with
  copy i mod r, convolutions by lax.conv_general_dilated."""
  def conv(x, w, b):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

  n, m = len(symbols), config.model.maps
  first = jnp.tanh(params["embed"][symbols]) @ params["input"]["w"] + params["input"]["b"]
  state = jnp.zeros((1, n, config.model.width, m)).at[0, :, 0].set(first)
  p = params["cgru"]
  for i in range(n):
    c = i % config.relax.copies
    for j in range(config.model.cgrus):
      gates = ng.gate_cutoff(conv(state, p["gates_w"][c, j], p["gates_b"][c, j]))
      u, r = gates[..., :m], gates[..., m:]
      state = u * state + (1 - u) * jnp.tanh(conv(r * state, p["cand_w"][c, j],
                                                   p["cand_b"][c, j]))
  return state[0, :, 0] @ params["output"]["w"] + params["output"]["b"]


def test_padded_batch_matches_paper_model_and_copies_are_used_in_turn():
  config = small_config()
  hp = run_hp(config)
  params = ng.init_params(jax.random.key(0), None, hp, gc(config))
  assert params["cgru"]["gates_w"].shape[:2] == (3, 2)
  np.testing.assert_array_equal(params["cgru"]["gates_b"], 1.0)  # gates start open to s
  rng = np.random.default_rng(0)
  rows = [bt.examples("mul", k, 1, 9, rng)[0][0] for k in (1, 2, 4)]
  inputs = jnp.asarray(np.stack(rows), jnp.int32)
  logits = ng.apply(params, inputs, hp, config)
  for row, got in zip(rows, logits):
    n = int(np.sum(row != bt.PAD))
    want = reference_logits(params, jnp.asarray(row[:n], jnp.int32), config)
    np.testing.assert_allclose(got[:n], want, rtol=1e-4, atol=1e-4)
  # Step i uses copy i mod r: swapping two copies changes the result.
  swapped = jax.tree.map(lambda p: p[jnp.array([1, 0, 2])], params["cgru"])
  changed = ng.apply({**params, "cgru": swapped}, inputs, hp, config)
  assert not np.allclose(changed, logits, atol=1e-3)
  for i in range(7):
    np.testing.assert_array_equal(ng.step_params(params["cgru"], i)["cand_w"],
                                  params["cgru"]["cand_w"][i % 3])
  # Once averaged, every step uses the mean of the copies.
  mean = jax.tree.map(lambda p: jnp.broadcast_to(p.mean(0), p.shape), params["cgru"])
  np.testing.assert_allclose(ng.apply(params, inputs, {**hp, "averaged": True}, config),
                             ng.apply({**params, "cgru": mean}, inputs, hp, config),
                             rtol=1e-5, atol=1e-5)


def test_pull_term():
  copies = {"w": jnp.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]]), "b": jnp.array([0.0, 0.0, 3.0])}
  # w: mean (3, 2), squared deviations 4 + 0 + 4; b: mean 1, deviations 1 + 1 + 4.
  assert float(ng.relaxation_distance(copies)) == pytest.approx(14.0)
  config = small_config()
  params = ng.init_params(jax.random.key(0), None, run_hp(config), gc(config))
  data = ng.load_data(config)
  batch = {k: jnp.asarray(v[:8]) for k, v in data.train.items()}
  key = jax.random.key(1)
  loss0, _ = ng.loss_fn(params, batch, key, run_hp(config, pull=jnp.float32(0.0)), gc(config))
  loss1, _ = ng.loss_fn(params, batch, key, run_hp(config, pull=jnp.float32(0.01)), gc(config))
  distance = ng.relaxation_distance(params["cgru"])
  assert float(distance) > 0  # the copies start different
  assert float(loss1 - loss0) == pytest.approx(0.01 * float(distance), rel=1e-4)


def test_remat_gives_the_same_gradients():
  config = small_config(**{"model.dropout_rate": 0.1})
  hp = run_hp(config)
  params = ng.init_params(jax.random.key(0), None, hp, gc(config))
  batch = {k: jnp.asarray(v[:8]) for k, v in ng.load_data(config).train.items()}

  def grad(**overrides):
    c = sweep.apply_overrides(config, overrides)
    return jax.jit(jax.grad(lambda p: ng.loss_fn(p, batch, jax.random.key(1), hp, gc(c))[0]))(
        params)

  plain = grad()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               plain, grad(**{"model.remat": True}))


def train_and_test(config, steps, lr, eta, seed=0, chunk=100):
  """A self-contained training loop: the experiment's loss and curriculum, clip -> noise ->
  Adam (learning rate cosine-decayed to a tenth, for a steadier final model), batches drawn
  at random from the pool; returns test metrics and the final state."""
  data = ng.load_data(config)
  hp = run_hp(config)
  params = ng.init_params(jax.random.key(seed), None, hp, gc(config))
  schedule = optax.cosine_decay_schedule(lr, steps, alpha=0.1)
  tx = gradnoise.noisy(optax.adam(schedule), key=jax.random.key(seed + 1), eta=eta,
                       clip_norm=config.clip.norm)
  pool = {k: jnp.asarray(v) for k, v in data.train.items()}

  @jax.jit
  def train_chunk(state, start):
    def step(state, t):
      params, opt_state, extra = state
      index = jax.random.randint(jax.random.fold_in(jax.random.key(seed + 2), t),
                                 (config.batch_size,), 0, config.data.pool_size)
      batch = {k: v[index] for k, v in pool.items()}
      key = jax.random.fold_in(jax.random.key(seed + 3), t)
      (_, aux), grads = jax.value_and_grad(ng.loss_fn, has_aux=True)(
          params, batch, key, {**hp, **extra}, gc(config))
      updates, opt_state = tx.update(grads, opt_state, params)
      extra = ng.after_step(extra, aux, hp, gc(config))
      return (optax.apply_updates(params, updates), opt_state, extra), None
    return jax.lax.scan(step, state, start + jnp.arange(chunk))[0]

  state = (params, tx.init(params), ng.init_state(None, None, hp, gc(config)))
  for start in range(0, steps, chunk):
    state = train_chunk(state, start)
  test = {k: jnp.asarray(v) for k, v in data.evals["test"].items()}
  metrics = ng.eval_fn(state[0], test, {**hp, **state[2]}, gc(config))
  return {k: float(jnp.mean(v)) for k, v in metrics.items()}, state


def test_learns_binary_addition():
  config = small_config(**{"data.task": "add", "data.test_bits": 4, "data.pool_size": 1024,
                           "data.test_examples": 256, "model.maps": 12,
                           "relax.copies": 6, "curriculum.window": 50})
  metrics, (_, _, extra) = train_and_test(config, steps=1200, lr=0.003, eta=1e-4)
  assert int(extra["bits"]) == 4  # the curriculum reached the longest training operands
  assert 1.0 - metrics["bit_error"] >= 0.95, metrics


def test_validate_names_bad_fields():
  with pytest.raises(UsageError, match="data.task"):
    trainer.validate(small_config(**{"data.task": "div"}), ng.EXPERIMENT)
  with pytest.raises(UsageError, match="curriculum.start_bits"):
    trainer.validate(small_config(**{"curriculum.start_bits": 9}), ng.EXPERIMENT)
  with pytest.raises(UsageError, match="model.dropout_rate"):
    trainer.validate(small_config(**{"model.dropout_rate": 1.0}), ng.EXPERIMENT)


@pytest.mark.parametrize("variant, num_runs", [("table6", 3**6 * 2 * 10),
                                                ("table6_small", 8)])
def test_sweeps_are_one_compile_group(variant, num_runs):
  config = configs.get_config(variant)
  runs = [sweep.apply_overrides(config, o) for o in configs.get_sweep(variant)]
  assert len(runs) == num_runs
  for run in runs:
    trainer.validate(run, ng.EXPERIMENT)
  assert len({trainer.group_key(run, ng.EXPERIMENT) for run in runs}) == 1
