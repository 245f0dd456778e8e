"""Table 5 of Neelakantan et al. (2015) from NRAM work dirs.

Run: ``python -m experiments.nram_table WORKDIR...``.

Reads each work dir's ``results.csv`` (finished runs). A run is *solved* when its test
error reached 0 at some evaluation (``best_test_error``, 100% accuracy on the held-out
examples at the training size; Neelakantan et al. sec. 4.4 count "successful" runs). Per
setting (the swept fields other than ``seed`` and ``noise.eta``) and noise arm it prints
the % of runs solved with a Wilson 95% interval, and the same for the final model
(``test_error``), the larger size (``large_error``) and discretised execution
(``test_discrete_error``), beside the paper's Table 5; then the paired-seed comparison:
seeds solved only with noise, only without, and the exact two-sided McNemar p-value (a
binomial test on those discordant pairs).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from typing import Sequence

from scipy import stats

PAPER_TABLE5 = {"no noise": (1.0, 0.0, 3.0), "noise": (5.0, 22.0, 7.0)}  # % per setting
NOT_SETTING = ("run", "seed", "noise.eta")
SOLVED_BY = (("solved", "best_test_error"), ("final", "test_error"),
             ("large", "large_error"), ("discrete", "test_discrete_error"))
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval (low, high) for a binomial proportion (Wilson 1927);
  (nan, nan) for n = 0."""
  if n == 0:
    return math.nan, math.nan
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, centre - half), min(1.0, centre + half)


def read_runs(workdirs: Sequence[str]) -> list[dict[str, str]]:
  """The rows of every work dir's results.csv (raises FileNotFoundError naming it)."""
  rows = []
  for workdir in workdirs:
    with open(os.path.join(workdir, "results.csv"), newline="") as f:
      rows += list(csv.DictReader(f))
  return rows


def is_zero(row: dict[str, str], column: str) -> bool:
  value = row.get(column, "")
  return value not in ("", "nan") and float(value) == 0.0


def table(rows: list[dict[str, str]]) -> str:
  """The markdown tables (see module doc)."""
  metric_columns = {c for _, c in SOLVED_BY} | {"diverged"}
  setting_fields = sorted(k for k in (rows[0] if rows else {})
                          if k not in NOT_SETTING and k not in metric_columns
                          and not k.startswith(("train_", "best_", "state_", "test_",
                                                "large_")))
  groups: dict[tuple, dict[float, dict[str, dict[str, str]]]] = {}
  for row in rows:
    setting = tuple(row[k] for k in setting_fields)
    groups.setdefault(setting, {}).setdefault(float(row["noise.eta"]), {})[row["seed"]] = row
  header = ["setting", "eta", "runs"] + [f"% {name} [95% CI]" for name, _ in SOLVED_BY]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  pairs = ["| setting | eta | paired seeds | solved by both | only with noise | "
           "only without | McNemar p |", "|---|---|---|---|---|---|---|"]
  for setting, arms in sorted(groups.items()):
    label = ", ".join(f"{k}={v}" for k, v in zip(setting_fields, setting)) or "-"
    for eta, runs in sorted(arms.items()):
      cells = [label, f"{eta:g}", str(len(runs))]
      for _, column in SOLVED_BY:
        k = sum(is_zero(r, column) for r in runs.values())
        low, high = wilson(k, len(runs))
        cells.append(f"{100 * k / len(runs):.1f} [{100 * low:.1f}, {100 * high:.1f}]")
      lines.append("| " + " | ".join(cells) + " |")
    base = arms.get(0.0, {})
    for eta, runs in sorted(arms.items()):
      if eta == 0.0:
        continue
      seeds = sorted(set(runs) & set(base))
      noisy = {s for s in seeds if is_zero(runs[s], "best_test_error")}
      plain = {s for s in seeds if is_zero(base[s], "best_test_error")}
      only_noise, only_plain = len(noisy - plain), len(plain - noisy)
      discordant = only_noise + only_plain
      p = stats.binomtest(only_noise, discordant).pvalue if discordant else math.nan
      pairs.append(f"| {label} | {eta:g} | {len(seeds)} | {len(noisy & plain)} | "
                   f"{only_noise} | {only_plain} | {p:.3g} |")
  paper = ("Paper (Table 5, % solved over 100 seeds per setting): no noise "
           f"{PAPER_TABLE5['no noise']}, with noise {PAPER_TABLE5['noise']} "
           "(averages 1.3% and 11.3%).")
  return "\n".join(lines + ["", *pairs, "", paper])


def main(argv: Sequence[str]) -> int:
  if len(argv) < 2:
    print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
    return 2
  print(table(read_runs(argv[1:])))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
