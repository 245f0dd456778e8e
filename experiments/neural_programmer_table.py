r"""Table 4 of Neelakantan et al. (2015) and its single-column counts from neural_programmer
work dirs.

    python -m experiments.neural_programmer_table WORKDIR [WORKDIR ...]

Per data setting (columns, text columns) and arm (no noise / noise / dropout / dropout +
noise): the runs whose final test accuracy is 100% (the noise paper's count: 1/216 without
noise, 9/216 with noise, 0 with dropout on one column) with a Wilson 95% interval, the
same count for the best accuracy over evaluations (an optimistic reading: it selects on
the test questions), and the best and mean final test accuracy over runs beside the noise
paper's Table 4 (five columns, text entries).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections import defaultdict
from typing import Sequence

from gradnoise import results_format as rf
from gradnoise.errors import UsageError

# Noise paper Table 4, test accuracy % (no noise, noise, dropout, dropout + noise).
PAPER_TABLE4 = {"5 columns": (95.3, 98.7, 97.4, 99.2), "text entries": (97.6, 98.8, 99.1, 97.3)}
# Noise paper sec. 4.3: single-column runs reaching 100% test accuracy, of 216.
PAPER_SINGLE = {"no noise": 1, "noise": 9, "dropout": 0}
ARMS = ("no noise", "noise", "dropout", "dropout + noise")
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (Wilson 1927): centre
  (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
  Raises ValueError for n < 1 or successes outside [0, n]."""
  if n < 1 or not 0 <= successes <= n:
    raise ValueError(f"wilson: successes={successes}, n={n}; accepted 0 <= successes <= n, n >= 1")
  p = successes / n
  denominator = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denominator
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
  return max(0.0, centre - half), min(1.0, centre + half)


def _value(run: dict[str, str], base: dict, dotted: str) -> str:
  if dotted in run:
    return run[dotted]
  node = base
  for part in dotted.split("."):
    node = node[part]
  return str(node)


def load(workdir: str) -> list[dict[str, str]]:
  """Rows of results.csv with every field this table groups by filled from the base
  config. Raises UsageError when the work dir has no results."""
  path = os.path.join(workdir, rf.RESULTS_FILE)
  if not os.path.isfile(path):
    raise UsageError(f"{workdir}: no {rf.RESULTS_FILE} (no finished runs yet)")
  with open(os.path.join(workdir, rf.CONFIG_FILE)) as f:
    base = json.load(f)["config"]
  with open(path) as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    for field in ("noise.eta", "model.dropout_rate", "data.max_columns", "data.text_columns"):
      row[field] = _value(row, base, field)
  return rows


def arm(row: dict[str, str]) -> str:
  noise, dropout = float(row["noise.eta"]) > 0, float(row["model.dropout_rate"]) > 0
  return ARMS[2 * dropout + noise]


def setting(row: dict[str, str]) -> str:
  columns, text = int(row["data.max_columns"]), int(row["data.text_columns"])
  if text:
    return "text entries" if columns == 2 else f"{columns} columns ({text} text)"
  return "1 column" if columns == 1 else f"{columns} columns"


def _fraction(successes: int, n: int) -> str:
  low, high = wilson(successes, n)
  return f"{successes}/{n} [{100 * low:.1f}, {100 * high:.1f}]%"


def table(rows: Sequence[dict[str, str]]) -> str:
  """The markdown table of the module docstring."""
  groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
  for row in rows:
    groups[(setting(row), arm(row))].append(row)
  lines = ["| setting | arm | runs at 100% (final) [Wilson 95%] | at 100% (best eval) | "
           "best final acc. % | mean final acc. % | paper |",
           "|---|---|---|---|---|---|---|"]
  for (name, arm_name), runs in sorted(groups.items(), key=lambda kv: (kv[0][0],
                                                                       ARMS.index(kv[0][1]))):
    final = [float(r["test_accuracy"]) for r in runs if r["diverged"] != "true"]
    best = [float(r.get("best_test_accuracy", "nan")) for r in runs if r["diverged"] != "true"]
    n = len(runs)
    paper = ""
    if name == "1 column" and arm_name in PAPER_SINGLE:
      paper = f"{PAPER_SINGLE[arm_name]}/216 at 100%"
    elif name in PAPER_TABLE4:
      paper = f"{PAPER_TABLE4[name][ARMS.index(arm_name)]}%"
    lines.append(
        f"| {name} | {arm_name} | {_fraction(sum(a >= 1.0 for a in final), n)} | "
        f"{_fraction(sum(a >= 1.0 for a in best), n)} | "
        f"{100 * max(final, default=float('nan')):.1f} | "
        f"{100 * sum(final) / max(len(final), 1):.1f} | {paper} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  if len(argv) < 2:
    print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
    return 2
  try:
    rows = [row for workdir in argv[1:] for row in load(workdir)]
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
