"""GRU4Rec (Hidasi et al. 2015, arXiv:1511.06939) session recommendations with gradient noise.

Variants (``--config configs/gru4rec.py:<variant> --config.data.path=FILE``):
  small   the Diginetica sample (../shared/data/sessions/diginetica_sample.csv, 525
          sessions after filtering; test = the last 7 days, 102 evaluation points), 100
          GRU units, 32 slots, 30 epochs: the losses TOP1, BPR and cross-entropy x noise
          eta in {0, 0.01, 0.3, 1.0} (gamma 0.55, after clipping) x 3 seeds = 36 runs in 3
          compile groups (one per loss), minutes on 2 CPU cores.
  small_low_eta  small with eta in {0, 1e-5, 1e-4, 1e-3}: on the sample, the noise paper's
          grid gives noise 8 to 500 times the gradient norm (docs/results.md).
  rsc15   the paper's RSC15 setup (yoochoose-clicks.dat; test = the last day) with Table 2's
          hyperparameters per loss (mini-batch, dropout, learning rate), 100 GRU units,
          adagrad, x the same noise x 3 seeds = 36 runs in 3 compile groups (a GPU job).

Choices where the paper is silent (docs/results.md):
  num_epochs        rsc15 10 (the later official code's default); small 30 (tiny data).
  clip.norm         10, global: the noise paper adds noise after clipping; GRU4Rec does not
                    clip. 10 leaves the sampled-loss gradients of these models mostly alone.
  optimizer         adagrad with Table 2's momentum (optimizer.momentum: 0.2 for BPR,
                    none for TOP1 and cross-entropy) on rsc15, eps 1e-6 as the official
                    code there (small: optax's 1e-7); optax's accumulator starts at 0.1,
                    the official code's at 0.
  eval.ties         conservative (the later official code's default).
  data.min_item_support  5 (official preprocess.py).
  small             learning rate 0.5, dropout 0.3, 32 slots: the sample has 478 training
                    sessions (35 steps per epoch); in a one-seed check of lr {0.05, 0.2, 0.5}
                    x dropout {0, 0.3}, 0.5 was best for every loss and Table 2's 0.01 barely
                    learns in 30 epochs.
"""

import ml_collections
from ml_collections import config_dict

from gradnoise.sweep import product, seeds, values

VARIANTS = ("small", "small_low_eta", "rsc15")
ETAS = [0.0, 0.01, 0.3, 1.0]
LOW_ETAS = [0.0, 1e-5, 1e-4, 1e-3]
# Table 2 (RSC15): loss -> mini-batch, dropout, learning rate, momentum.
TABLE2_RSC15 = {"top1": (50, 0.5, 0.01, 0.0), "bpr": (50, 0.2, 0.05, 0.2),
                "xe": (500, 0.0, 0.01, 0.0)}
FINAL_ACT = {"top1": "tanh", "bpr": "tanh", "xe": "linear"}


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/gru4rec.py; "
                     f"accepted: {', '.join(VARIANTS)}.")
  small = arg.startswith("small")
  config = ml_collections.ConfigDict()
  config.experiment = "gru4rec"
  config.seed = 0
  config.num_epochs = 30 if small else 10
  config.batch_size = 32 if small else TABLE2_RSC15["top1"][0]  # session-parallel slots

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adagrad"
  config.optimizer.learning_rate = 0.5 if small else TABLE2_RSC15["top1"][2]
  config.optimizer.decay_every_epochs = 0  # constant learning rate
  config.optimizer.decay_factor = 1.0
  config.optimizer.eps = None if small else 1e-6  # None: optax's default (1e-7)
  config.optimizer.momentum = None  # rsc15: per loss (Table 2), None = no momentum

  config.clip = ml_collections.ConfigDict()
  config.clip.norm = 10.0  # global norm; None = no clipping
  config.clip.per_leaf = False

  config.noise = ml_collections.ConfigDict()
  config.noise.schedule = "annealed"  # eta / (1 + t)^gamma
  config.noise.eta = 0.0
  config.noise.gamma = 0.55
  config.noise.std = 0.0  # used by schedule=constant

  config.model = ml_collections.ConfigDict()
  config.model.loss = "top1"  # top1 | bpr | xe
  config.model.final_act = FINAL_ACT["top1"]  # tanh (TOP1, BPR) | linear (xe)
  config.model.hidden = 100
  config.model.embedding = 0  # 0 = one-hot input (the paper)
  config.model.dropout = 0.3 if small else TABLE2_RSC15["top1"][1]

  config.data = ml_collections.ConfigDict()
  config.data.path = config_dict.placeholder(str)
  config.data.format = "auto"  # auto | rsc15 | diginetica
  config.data.test_days = 7.0 if small else 1.0  # Diginetica: 7 days; RSC15: the last day
  config.data.min_item_support = 5
  config.data.sessions_per_batch = config.batch_size  # must equal batch_size

  config.eval = ml_collections.ConfigDict()
  config.eval.ties = "conservative"  # conservative | optimistic | median

  config.train = ml_collections.ConfigDict()
  config.train.runs_per_batch = 12
  config.train.eval_every_epochs = 5 if small else 1
  config.train.eval_batch_size = 512
  config.train.checkpoint_every_epochs = 0 if small else 1
  return config


def _losses(arg: str) -> list[dict]:
  """Per loss: the loss, its output activation and (rsc15) Table 2's settings."""
  out = []
  for loss, (batch, dropout, learning_rate, momentum) in TABLE2_RSC15.items():
    setting = {"model.loss": loss, "model.final_act": FINAL_ACT[loss]}
    if arg == "rsc15":
      setting.update({"batch_size": batch, "data.sessions_per_batch": batch,
                      "model.dropout": dropout, "optimizer.learning_rate": learning_rate})
      if momentum:
        setting["optimizer.momentum"] = momentum
    out.append(setting)
  return out


def get_sweep(arg: str = "small") -> list[dict]:
  etas = LOW_ETAS if arg == "small_low_eta" else ETAS
  return product(_losses(arg), values("noise.eta", etas), seeds(3))
