"""Experiment 1 of Neelakantan et al. (2015): a deep fully connected network on MNIST.

20 hidden layers x 50 units (configurable), ReLU or ELU, softmax output, cross-entropy.
Every initialisation is "Gaussian weights with a per-layer std, zero biases", so the
init (a traced per-layer std vector) and the dropout rate vary inside one compiled program.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import mnist_data
from gradnoise import experiment, fields

INPUTS, CLASSES = 784, 10
INITS = ("zero", "simple", "he", "sussillo_abbott")
ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu}


def sussillo_abbott_gain(fan_in: int) -> float:
  """Random-walk initialisation gain for ReLU networks.

  Sussillo & Abbott (2014), "Random Walk Initialization for Training Very Deep
  Feedforward Networks", arXiv:1412.6558, eq. for ReLU:
  g = sqrt(2) * exp(1.2 / (max(N, 6) - 2.4)), weights N(0, g^2 / N), N = fan-in.
  """
  return math.sqrt(2.0) * math.exp(1.2 / (max(fan_in, 6) - 2.4))


def layer_sizes(config: ml_collections.ConfigDict) -> list[int]:
  return [INPUTS] + [config.model.width] * config.model.depth + [CLASSES]


def init_stds(config: ml_collections.ConfigDict) -> np.ndarray:
  """Weight std of each layer for ``model.init`` (a traced value, one per layer)."""
  fan_ins = np.array(layer_sizes(config)[:-1], np.float64)
  init = config.model.init
  if init == "zero":
    stds = np.zeros_like(fan_ins)
  elif init == "simple":  # the paper's "Simple Init": N(0, 0.1^2)
    stds = np.full_like(fan_ins, 0.1)
  elif init == "he":  # He et al. (2015): N(0, 2 / fan_in)
    stds = np.sqrt(2.0 / fan_ins)
  else:  # sussillo_abbott
    stds = np.array([sussillo_abbott_gain(int(n)) for n in fan_ins]) / np.sqrt(fan_ins)
  return stds.astype(np.float32)


FIELDS = {
    "model.depth": fields.integer(0),
    "model.width": fields.integer(1),
    "model.activation": fields.choice(*ACTIVATIONS),
    "model.init": fields.choice(*INITS),
    "model.dropout_rate": fields.number(0, 1, high_open=True),
    "data.source": fields.choice(*mnist_data.SOURCES),
    "data.path": fields.optional(fields.text(), "the source's default location"),
}


def load_data(config: ml_collections.ConfigDict) -> experiment.Dataset:
  data = mnist_data.load_mnist(config.data.source, config.data.path)
  return experiment.Dataset(
      train={"x": data.x_train, "y": data.y_train},
      evals={"test": {"x": data.x_test, "y": data.y_test}},
      description=data.description,
  )


def hparams(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  return {"init_std": init_stds(config), "dropout_rate": np.float32(config.model.dropout_rate)}


def init_params(key: jax.Array, batch: experiment.Batch, hp: experiment.HParams,
                config: experiment.GroupConfig) -> list[dict]:
  sizes = layer_sizes(config)
  params = []
  for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
    w = jax.random.normal(jax.random.fold_in(key, i), (m, n), jnp.float32) * hp["init_std"][i]
    params.append({"w": w, "b": jnp.zeros(n, jnp.float32)})
  return params


def apply(params, x, config, hp, dropout_key=None) -> jax.Array:
  """Logits; inverted dropout on hidden activations when ``dropout_key`` is given."""
  act = ACTIVATIONS[config.model.activation]
  for i, layer in enumerate(params[:-1]):
    x = act(x @ layer["w"] + layer["b"])
    if dropout_key is not None:
      keep = 1.0 - hp["dropout_rate"]
      mask = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), keep, x.shape)
      x = jnp.where(mask, x / keep, 0.0)
  return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, batch, key, hp, config):
  dropout_key = key if config.code_choices["dropout"] else None
  logits = apply(params, batch["x"], config, hp, dropout_key)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
  return loss, {"accuracy": accuracy}


def eval_fn(params, batch, hp, config):
  logits = apply(params, batch["x"], config, hp)
  return {
      "accuracy": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32),
      "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]),
  }


EXPERIMENT = experiment.Experiment(
    name="mnist_mlp",
    traced_fields=("model.init", "model.dropout_rate"),
    fields=FIELDS,
    load_data=load_data,
    hparams=hparams,
    init_params=init_params,
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    code_choices=lambda config: {"dropout": config.model.dropout_rate > 0},
)
