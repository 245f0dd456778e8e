"""Experiment 2 of Neelakantan et al. (2015): End-To-End Memory Networks on bAbI (Table 2).

Variants (``--config configs/memnet_babi.py:<variant>``), both on the bAbI v1.2 1k data
(``--config.data.path=.../tasks_1-20_v1-2``):
  table2  one-stage (softmax from the start) and two-stage (20 epochs of linear start,
          as the reference code) training, each without and with noise (eta 1.0, gamma
          0.55, after clipping), on all 20 tasks x 5 seeds, 200 epochs: 400 runs in one
          compile group (task, linear start, noise and seed are traced).
  small   the same comparison on tasks 1, 4, 9, 10, 15, 16 (stories of at most 10
          sentences) x 2 seeds, 100 epochs: 48 runs in one group, about 3 minutes on 2 CPU
          cores (measured: 0.9 s per epoch of all 48 runs, 1.3 s per evaluation).
Memory of the 20-task group: all tasks padded to vocabulary 175, memory 50 x 11 words are
86 MiB of int32 arrays (train 39, valid 4, test 43), held once per device; each run's
parameters are 4 x 225 x 20 floats (72 KiB); evaluation gathers a run's task split (2.2 MiB
per run for test), so 80 runs at once add about 180 MiB.
Otherwise the MemN2N reference setup (Sukhbaatar et al. 2015, their MemN2N-babi-matlab
code): 3 hops, embedding 20, memory of the 50 most recent sentences, batch 32, SGD lr 0.005
halved every 25 epochs, each weight matrix's gradient clipped to norm 40, position and
temporal encoding, 10% random empty memories. The paper's fixed-noise variant for memory
networks is --config.noise.schedule=constant --config.noise.std=0.001.
"""

import ml_collections
from ml_collections import config_dict

from gradnoise.sweep import product, seeds, values

VARIANTS = ("table2", "small")
SMALL_TASKS = [1, 4, 9, 10, 15, 16]


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/memnet_babi.py; "
                     f"accepted: {', '.join(VARIANTS)}.")
  config = ml_collections.ConfigDict()
  config.experiment = "memnet"
  config.seed = 0
  config.num_epochs = {"table2": 200, "small": 100}[arg]
  config.batch_size = 32

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.005
  config.optimizer.decay_every_epochs = 25
  config.optimizer.decay_factor = 0.5

  config.clip = ml_collections.ConfigDict()
  config.clip.norm = 40.0
  config.clip.per_leaf = True  # each weight matrix separately, as the reference

  config.noise = ml_collections.ConfigDict()
  config.noise.schedule = "annealed"  # annealed: eta / (1 + t)^gamma; constant: std
  config.noise.eta = 1.0  # 0 = no noise
  config.noise.gamma = 0.55
  config.noise.std = 0.001  # used by schedule=constant

  config.model = ml_collections.ConfigDict()
  config.model.hops = 3
  config.model.embedding_dim = 20
  config.model.linear_start_epochs = 0  # 0 = one-stage; the reference's two-stage: 20
  # > 0: also end linear start once the validation loss has not improved for this many
  # evaluations (every train.eval_every_epochs epochs); 0: after the epoch count only.
  config.model.linear_start_patience = 0
  config.model.init_std = 0.1
  config.model.random_time = 0.1  # random empty memories ("RN"), 0 = off
  config.model.position_encoding = "reference"  # reference | paper

  config.data = ml_collections.ConfigDict()
  config.data.path = config_dict.placeholder(str)  # tasks_1-20_v1-2 folder, or "download"
  config.data.babi_set = "en"  # en (1k) | en-10k
  config.data.tasks = tuple(range(1, 21)) if arg == "table2" else tuple(SMALL_TASKS)
  config.data.task = 1  # this run's task, one of data.tasks
  config.data.memory_size = 50

  config.train = ml_collections.ConfigDict()
  config.train.runs_per_batch = 80 if arg == "table2" else 48
  config.train.eval_every_epochs = 5
  config.train.eval_batch_size = 500
  config.train.checkpoint_every_epochs = 25
  return config


def get_sweep(arg: str = "small") -> list[dict]:
  tasks = list(range(1, 21)) if arg == "table2" else SMALL_TASKS
  return product(values("data.task", tasks), values("model.linear_start_epochs", [0, 20]),
                 values("noise.eta", [0.0, 1.0]), seeds(5 if arg == "table2" else 2))
