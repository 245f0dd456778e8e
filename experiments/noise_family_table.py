r"""Table and figure of the noise-family comparison (``configs/mnist_mlp.py:noise_family``).

    python -m experiments.noise_family_table WORKDIR [FIGURE.png]

Arms are (``noise.kind``, its strength); gaussian at eta 0 is "none". Per arm, over its
seeds: the final and best test accuracy, the runs that left chance (final test accuracy
above 50%), the last epoch's noise-to-gradient ratio (``train_noise_to_grad``, the epoch's
mean over steps, then the mean over seeds), its clipped fraction, and diverged runs. The
figure shows the final accuracies per seed, mean test accuracy over epochs and the mean
noise-to-gradient ratio over epochs (log scale).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Sequence

import numpy as np

from gradnoise import results_format
from gradnoise.errors import UsageError
from gradnoise.report.group import KIND_NOISE_FIELDS

Arm = tuple[str, str, float]  # kind, strength field (short), strength


def arm_of(row: dict[str, str]) -> Arm:
  """The arm of a results.csv row; gaussian with eta 0 is no noise."""
  kind = row.get("noise.kind") or "gaussian"
  name = KIND_NOISE_FIELDS.get(kind, "noise.eta")
  value = float(row[name])
  if kind == "gaussian" and value == 0:
    return ("none", "", 0.0)
  return (kind, name.split(".")[1], value)


def load(workdir: str) -> tuple[dict[Arm, list[dict[str, str]]], dict[int, list[dict]]]:
  """Finished runs by arm, and every run's metrics.jsonl records in epoch order.

  Raises:
    UsageError: the work dir has no results.csv (or no noise.kind column).
  """
  path = os.path.join(workdir, results_format.RESULTS_FILE)
  if not os.path.exists(path):
    raise UsageError(f"{path}: no such file; accepted: a work dir of "
                     "configs/mnist_mlp.py:noise_family with finished runs.")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if rows and "noise.kind" not in rows[0]:
    raise UsageError(f"{path} has no noise.kind column: not a noise-family sweep.")
  arms: dict[Arm, list[dict[str, str]]] = {}
  for row in rows:
    arms.setdefault(arm_of(row), []).append(row)
  by_run: dict[int, list[dict]] = {}
  with open(os.path.join(workdir, results_format.METRICS_FILE)) as f:
    for line in f:
      record = json.loads(line)
      by_run.setdefault(record["run"], []).append(record)
  return arms, by_run


def table(arms: dict[Arm, list[dict[str, str]]]) -> str:
  """The Markdown table, one row per arm in sweep order."""
  lines = ["| kind | strength | final test acc., mean (min-max) | best test acc., mean | "
           "runs > 50% | noise/grad (last epoch) | clipped fraction (last epoch) | diverged |",
           "|---|---|---|---|---|---|---|---|"]
  for (kind, name, value), rows in arms.items():
    final = np.array([float(r["test_accuracy"]) for r in rows])
    best = np.array([float(r["best_test_accuracy"]) for r in rows])
    ratio = np.mean([float(r["train_noise_to_grad"]) for r in rows])
    clipped = np.mean([float(r["train_clipped_fraction"]) for r in rows])
    diverged = sum(r["diverged"] == "True" for r in rows)
    strength = f"{name} = {value:g}" if name else "-"
    lines.append(f"| {kind} | {strength} | {final.mean():.1%} ({final.min():.1%}-"
                 f"{final.max():.1%}) | {best.mean():.1%} | {int((final > 0.5).sum())}/"
                 f"{len(rows)} | {ratio:.3g} | {clipped:.2f} | {diverged} |")
  return "\n".join(lines)


def figure(arms: dict[Arm, list[dict[str, str]]], by_run: dict[int, list[dict]],
           out: str) -> None:
  """Final accuracy per seed, test accuracy and noise-to-gradient ratio over epochs."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
  labels = [f"{k}\n{n}={v:g}" if n else "none" for k, n, v in arms]
  cmap = plt.get_cmap("tab20")
  for i, rows in enumerate(arms.values()):
    final = [float(r["test_accuracy"]) for r in rows]
    axes[0].bar(i, np.mean(final), color="lightgray")
    axes[0].scatter([i] * len(final), final, color="k", s=12, zorder=3)
    runs = [int(r["run"]) for r in rows]
    for ax, key in ((axes[1], "test_accuracy"), (axes[2], "train_noise_to_grad")):
      curves = np.array([[m[key] for m in by_run[run] if key in m] for run in runs])
      epochs = [m["epoch"] for m in by_run[runs[0]] if key in m]
      ax.plot(epochs, curves.mean(0), color=cmap(i % 20), label=labels[i].replace("\n", " "),
              ls="-" if i % 2 == 0 else "--")
  axes[0].set_xticks(range(len(arms)), labels, rotation=90, fontsize=7)
  axes[0].set_ylabel("final test accuracy (bar: mean; dots: seeds)")
  axes[1].set_xlabel("epoch")
  axes[1].set_ylabel("test accuracy, mean over seeds")
  axes[2].set_xlabel("epoch")
  axes[2].set_ylabel("noise norm / clipped gradient norm (epoch mean, mean over seeds)")
  axes[2].set_yscale("symlog", linthresh=1e-3)
  axes[2].legend(fontsize=6, ncol=2)
  fig.suptitle("Noise family: Simple init, 20 x 50 ReLU, clip 10, lr 0.1, shipped digits")
  fig.tight_layout()
  fig.savefig(out, dpi=110)


def main(argv: Sequence[str]) -> int:
  if len(argv) not in (2, 3):
    print(__doc__, file=sys.stderr)
    return 2
  try:
    arms, by_run = load(argv[1])
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(table(arms))
  if len(argv) == 3:
    figure(arms, by_run, argv[2])
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
