"""Experiment 1 of Neelakantan et al. (2015): a deep fully connected network on MNIST.

20 hidden layers x 50 units (configurable), ReLU or ELU, softmax output, cross-entropy: a
linen module run by :func:`gradnoise.flax_experiment.supervised`. Every initialisation is
"Gaussian weights with a per-layer std, zero biases", so the init (a traced per-layer std
vector) and the dropout rate (inverted dropout on the hidden activations) vary inside one
compiled program; dropout on/off is the code choice.
"""

from __future__ import annotations

import math

from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from experiments import mnist_data
from gradnoise import experiment, fields, flax_experiment

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


def gaussian(std: jax.Array) -> jax.nn.initializers.Initializer:
  """Initializer of N(0, std^2) weights; ``std`` may be traced."""
  return lambda key, shape, dtype=np.float32: jax.random.normal(key, shape, dtype) * std


class MLP(nn.Module):
  """Logits [B, 10] of inputs [B, 784]; ``init_std`` [layers] is each layer's weight std.

  Attributes:
    widths: output width of each layer (``layer_sizes(config)[1:]``).
    activation: a key of ``ACTIVATIONS``.
    init_std: per-layer weight std (traced); biases start at zero.
    dropout_rate: traced rate of inverted dropout after every hidden activation, or None
      for no dropout.
  """

  widths: Sequence[int]
  activation: str
  init_std: jax.Array
  dropout_rate: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = nn.Dense(width, kernel_init=gaussian(self.init_std[i]), name=f"layer_{i}")(x)
      if i + 1 < len(self.widths):
        x = ACTIVATIONS[self.activation](x)
        if self.dropout_rate is not None:
          x = flax_experiment.Dropout(self.dropout_rate)(x, deterministic=not train)
    return x


def model(hp: experiment.HParams, config: experiment.GroupConfig) -> MLP:
  dropout_rate = hp["dropout_rate"] if config.code_choices["dropout"] else None
  return MLP(tuple(layer_sizes(config)[1:]), config.model.activation, hp["init_std"],
             dropout_rate)


def data(config: ml_collections.ConfigDict) -> flax_experiment.ArrayData:
  mnist = mnist_data.load_mnist(config.data.source, config.data.path)
  return flax_experiment.ArrayData(mnist.x_train, mnist.y_train,
                                   {"test": (mnist.x_test, mnist.y_test)}, mnist.description)


def hparams(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  return {"init_std": init_stds(config), "dropout_rate": np.float32(config.model.dropout_rate)}


EXPERIMENT = flax_experiment.supervised(
    "mnist_mlp", model, data,
    fields=FIELDS,
    traced_fields=("model.init", "model.dropout_rate"),
    hparams=hparams,
    code_choices=lambda config: {"dropout": config.model.dropout_rate > 0},
    mutable=(),
)
init_params, loss_fn = EXPERIMENT.init_params, EXPERIMENT.loss_fn  # for benchmarks
