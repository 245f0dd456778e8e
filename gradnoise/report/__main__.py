"""Command line: ``python -m gradnoise.report WORKDIR [WORKDIR ...] [flags]``; prints the
Markdown report (also written to ``--out``), exit code 2 on bad input."""

from __future__ import annotations

import math
import sys
from typing import Sequence

from absl import app, flags

from gradnoise.errors import UsageError
from gradnoise.report.make import make_report

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output dir for report.md, summary.csv and PNGs; default: "
                    "<first WORKDIR>/report.")
flags.DEFINE_string("metric", None, "results.csv column to tabulate; default: the summary "
                    "metric of the experiment in config.json, else test_accuracy.")
flags.DEFINE_boolean("higher_is_better", True, "Whether larger metric values are better; "
                     "unset: false if the metric name contains 'error' or 'loss'.")
flags.DEFINE_string("group_by", "", "Comma list of dotted fields that define a setting; "
                    "default: every field that differs between the runs (swept, or in the "
                    "work dirs' base configs) except seed and the noise fields.")
flags.DEFINE_string("noise_field", "", "Field giving the noise level (0 or unset: no noise); "
                    "default: each run's noise.schedule decides (noise.eta for annealed, "
                    "noise.std for constant).")
flags.DEFINE_string("thresholds", "", "Comma list, e.g. 0.01,0.05: count runs with metric "
                    "< threshold (lower is better) or >= threshold (higher is better).")
flags.DEFINE_string("curves", None, "Comma list of metrics.jsonl metrics to plot over "
                    "steps; default: the experiment's curves and --metric, where logged "
                    "(else train_loss,test_accuracy).")
flags.DEFINE_boolean("plots", True, "Write the PNG figures.")
flags.DEFINE_string("select_by", "", "results.csv column, e.g. train_error: also report "
                    "the metric of each arm's run with the best final value of it (best of "
                    "k restarts, as the MemN2N paper by training error).")


def parse_list(text: str) -> list[str]:
  """``"a, b,c"`` -> ``["a", "b", "c"]``."""
  return [s.strip() for s in text.split(",") if s.strip()]


def parse_thresholds(text: str) -> list[float]:
  """A comma list of numbers (``"0.01,0.05"``); UsageError on anything else."""
  out = []
  for item in parse_list(text):
    try:
      value = float(item)
    except ValueError:
      value = math.nan
    if not math.isfinite(value):
      raise UsageError(f"--thresholds: {item!r} is not a finite number; accepted: a comma "
                       "list of numbers such as 0.01,0.02,0.05.")
    out.append(value)
  return out


def main(argv: Sequence[str]) -> int:
  """Prints the Markdown report; exit code 2 on bad input."""
  try:
    text = make_report(
        argv[1:], FLAGS.out, FLAGS.metric or None,
        group_by=parse_list(FLAGS.group_by) or None, noise_field=FLAGS.noise_field or None,
        higher_is_better=(FLAGS.higher_is_better if FLAGS["higher_is_better"].present
                          else None),
        thresholds=parse_thresholds(FLAGS.thresholds),
        curves=parse_list(FLAGS.curves) if FLAGS.curves is not None else None,
        plots=FLAGS.plots, select_by=FLAGS.select_by or None)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(text, end="")
  return 0


if __name__ == "__main__":
  app.run(main)
