r"""Table 2 of Neelakantan et al. (2015) from memnet work dirs.

    python -m experiments.babi_table WORKDIR [WORKDIR ...]

Per bAbI task and training setting (one-stage / two-stage x no noise / noise): mean train,
validation and test error over seeds, the test error of the seed with the lowest
validation error ("best of k" restarts, as the MemN2N paper selects among its runs), and
the means over tasks beside the paper's Table 2 and the MemN2N paper's 1k mean test error.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from typing import Sequence

import numpy as np
from absl import app

from gradnoise import report
from gradnoise.errors import UsageError

# Neelakantan et al. (2015), Table 2 (train / validation error, likely reading) and
# Sukhbaatar et al. (2015), 1k mean test error with PE, LS and RN.
PAPER_TABLE2 = {
    ("one-stage", "no noise"): (0.096, 0.195),
    ("one-stage", "noise"): (0.105, 0.166),
    ("two-stage", "no noise"): (0.062, 0.109),
    ("two-stage", "noise"): (0.059, 0.108),
}
MEMN2N_MEAN_TEST_ERROR = 0.139
SPLITS = ("train_error", "valid_error", "test_error")


def setting_of(run: report.Run) -> tuple[str, str]:
  stage = "two-stage" if (run.get("model.linear_start_epochs") or 0) > 0 else "one-stage"
  schedule = run.get("noise.schedule") or "annealed"
  noisy = (run.get("noise.std") or 0) > 0 if schedule == "constant" else (
      (run.get("noise.eta") or 0) > 0)
  return stage, "noise" if noisy else "no noise"


def collect(workdirs: Sequence[str]) -> dict[tuple[int, str, str], list[dict[str, float]]]:
  """(task, stage, noise) -> the finished runs' final errors."""
  data = report.load_runs(workdirs)
  cells: dict[tuple[int, str, str], list[dict[str, float]]] = defaultdict(list)
  for run in data.runs:
    if run.final is None:
      continue
    missing = [s for s in SPLITS if s not in run.final]
    if missing:
      raise UsageError(f"run {run.run} of {run.workdir} lacks {', '.join(missing)}; "
                       "is this a memnet work dir?")
    cells[(int(run.get("data.task")), *setting_of(run))].append(run.final)
  if not cells:
    raise UsageError(f"no finished runs in {', '.join(workdirs)}.")
  return cells


def _pct(x: float) -> str:
  return f"{100 * x:.1f}" if math.isfinite(x) else ""


def table(cells: dict[tuple[int, str, str], list[dict[str, float]]]) -> str:
  """Markdown: per task and setting, then means over tasks beside the papers."""
  settings = sorted({k[1:] for k in cells})
  tasks = sorted({k[0] for k in cells})
  header = ["task"] + [f"{s} {n}: train / valid / test (best-of-k test)" for s, n in settings]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  means: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
  for task in tasks:
    row = [f"qa{task}"]
    for setting in settings:
      runs = cells.get((task, *setting), [])
      if not runs:
        row.append("")
        continue
      errors = np.array([[r[s] for s in SPLITS] for r in runs])
      mean = errors.mean(axis=0)
      best = errors[np.argmin(errors[:, 1]), 2]  # lowest validation error picks the run
      means[setting].append(np.append(mean, best))
      row.append(f"{_pct(mean[0])} / {_pct(mean[1])} / {_pct(mean[2])} ({_pct(best)}, "
                 f"k={len(runs)})")
    lines.append("| " + " | ".join(row) + " |")
  lines += ["", "Mean over tasks (error %), ours beside Neelakantan et al. (2015) Table 2 "
            "(train / valid) and MemN2N 1k mean test error 13.9%:", "",
            "| setting | tasks | train | valid | test | best-of-k test | paper train | "
            "paper valid |", "|---|---|---|---|---|---|---|---|"]
  for setting in settings:
    m = np.mean(means[setting], axis=0)
    paper = PAPER_TABLE2.get(setting, (math.nan, math.nan))
    lines.append(f"| {setting[0]}, {setting[1]} | {len(means[setting])} | {_pct(m[0])} | "
                 f"{_pct(m[1])} | {_pct(m[2])} | {_pct(m[3])} | {_pct(paper[0])} | "
                 f"{_pct(paper[1])} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  try:
    print(table(collect(argv[1:])))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
