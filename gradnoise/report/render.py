"""The report as text: Markdown (report.md, also printed) and summary.csv."""

from __future__ import annotations

import csv
import math
from typing import Sequence

from gradnoise.report.group import GAUSSIAN, arm_order, fmt_value
from gradnoise.report.stats import MIN_WILCOXON_PAIRS, Report


def _num(value: float, spec: str = ".4g") -> str:
  return format(value, spec) if math.isfinite(value) else ""


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  cell = lambda s: str(s).replace("|", "\\|")
  lines = ["| " + " | ".join(cell(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def _threshold_label(report: Report, t: float) -> str:
  return f"{'>=' if report.higher_is_better else '<'} {t:g}"


def arm_labels(report: Report) -> list[str]:
  """The arms' labels in report order: "no noise" first, then by noise level."""
  arms = {(a.noise, a.field, a.kind, a.extras): a for s in report.settings for a in s.arms}
  return [a.label for a in sorted(arms.values(), key=arm_order)]


def to_markdown(report: Report, figures: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
  """The report as Markdown: summary, threshold and paired tables, then the figures and
  ``notes`` about them (e.g. a figure left out for lack of data)."""
  m = report.metric
  direction = "higher" if report.higher_is_better else "lower"
  lines = [f"# Gradient noise: {m}", "",
           f"Work dirs: {', '.join(report.workdirs)}. Settings grouped by: "
           f"{', '.join(report.group_by) or 'nothing (all runs)'}. Noise level: "
           f"{report.noise_field}; 0 or unset: no noise. {m}: {direction} is better."]
  if report.unfinished:
    lines.append(f"{report.unfinished} runs are not finished yet: they appear in the curves "
                 "only.")
  if not report.arms:
    lines += ["", "No finished runs yet: no tables."]
  else:
    selected = [f"selected by {report.select_by}"] if report.select_by else []
    lines += ["", f"## Final {m}", ""]
    lines += _md_table(
        ["setting", "noise", "runs", "diverged", "non-finite", "best", "mean", "sd",
         "95% CI ±"] + selected,
        [[a.setting.label, a.arm.label, a.runs, a.diverged, a.nonfinite, _num(a.best),
          _num(a.mean), _num(a.sd), _num(a.ci95)] + ([_num(a.selected)] if selected else [])
         for a in report.arms])
    lines += ["", "runs: finished runs. Diverged runs keep their final value. Non-finite "
              "values (NaN, inf) are left out of best, mean, sd and CI (n = finite runs) and "
              "count as failures in threshold counts. sd: ddof=1; 95% CI: half-width "
              "t(0.975, n-1)·sd/√n, blank for n = 1."
              + (f" selected: {m} of the run with the best final {report.select_by} (best "
                 "of k restarts)." if selected else "")]
  if report.arms and report.thresholds:
    labels = arm_labels(report)
    lines += ["", f"## Runs with {m} {'>=' if report.higher_is_better else '<'} threshold",
              ""]
    rows = []
    for setting in report.settings:
      cells = {a.arm.label: a for a in report.arms if a.setting is setting}
      if not cells:
        continue
      for i, t in enumerate(report.thresholds):
        rows.append([setting.label, f"{m} {_threshold_label(report, t)}"] +
                    [f"{cells[a].passed[i]}/{cells[a].runs}" if a in cells else ""
                     for a in labels])
    lines += _md_table(["setting", "threshold"] + labels, rows)
    lines += ["", "Cells: runs meeting the threshold / finished runs; non-finite values "
              "never do."]
  if report.pairs:
    lines += ["", "## Paired by seed: noise minus no noise", ""]
    lines += _md_table(
        ["setting", "noise", "pairs", "mean diff", "t-test p", "Wilcoxon p"],
        [[p.setting.label, p.arm.label, p.pairs, _num(p.mean_diff), _num(p.p_ttest, ".3g"),
          _num(p.p_wilcoxon, ".3g")] for p in report.pairs])
    dropped = sum(p.dropped for p in report.pairs)
    lines += ["", "Pairs: runs of one setting with the same seed and the same values of "
              "every other field outside noise.* (base configs included). Two-sided paired "
              "t-test (scipy.stats.ttest_rel); Wilcoxon signed-rank only with >= "
              f"{MIN_WILCOXON_PAIRS} nonzero differences."
              + (f" {dropped} pairs with a non-finite value left out." if dropped else "")]
  if figures or notes:
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ([""] if figures and notes else []) + list(notes)
  return "\n".join(lines) + "\n"


def write_summary_csv(report: Report, path: str) -> None:
  """summary.csv: one row per setting and noise arm; paired columns on the noise arms;
  ``selected`` blank without ``select_by``; ``noise_field`` names the kind of noise other
  than gaussian (``noise.sigma (anticorrelated)``)."""
  pairs = {id(p.arm): p for p in report.pairs}
  op = "ge" if report.higher_is_better else "lt"
  header = (["setting"] + report.group_by + ["noise_field", "noise", "runs", "diverged",
            "nonfinite", "best", "mean", "sd", "ci95"]
            + [f"runs_{op}_{t:g}" for t in report.thresholds]
            + ["pairs", "mean_diff", "p_ttest", "p_wilcoxon", "selected"])
  num = lambda x: repr(x) if math.isfinite(x) else ""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    for a in report.arms:
      p = pairs.get(id(a.arm))
      writer.writerow(
          [a.setting.label] + [fmt_value(a.setting.values[g]) for g in report.group_by]
          + [a.arm.field + (f" ({a.arm.kind})" if a.arm.kind not in ("", GAUSSIAN) else ""),
             repr(a.arm.noise), a.runs, a.diverged, a.nonfinite]
          + [num(x) for x in (a.best, a.mean, a.sd, a.ci95)] + list(a.passed)
          + ([p.pairs, num(p.mean_diff), num(p.p_ttest), num(p.p_wilcoxon)] if p
             else ["", "", "", ""]) + [num(a.selected)])
