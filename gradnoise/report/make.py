"""One report: reads the work dirs, computes the statistics and writes report.md,
summary.csv and (importing matplotlib only then) the PNGs."""

from __future__ import annotations

import os
from typing import Sequence

from gradnoise import results_format as fmt
from gradnoise.errors import UsageError
from gradnoise.report.defaults import experiment_defaults
from gradnoise.report.load import load_runs
from gradnoise.report.render import to_markdown, write_summary_csv
from gradnoise.report.stats import analyze


def make_report(workdirs: Sequence[str], out: str | None = None,
                metric: str | None = None, *, group_by: Sequence[str] | None = None,
                noise_field: str | None = None, higher_is_better: bool | None = None,
                thresholds: Sequence[float] = (), curves: Sequence[str] | None = None,
                plots: bool = True, select_by: str | None = None) -> str:
  """Writes report.md, summary.csv and the PNGs to ``out``; returns the Markdown.

  ``out`` defaults to ``<first work dir>/report``. ``metric`` None: the experiment's
  summary metric (:func:`gradnoise.report.defaults.experiment_defaults`). ``curves`` None:
  those of the experiment's curves and ``metric`` that metrics.jsonl has; a name it lacks
  is a UsageError otherwise. With ``plots``, also the noise diagnostics over epochs where
  logged (a note in report.md where not).
  """
  data = load_runs(workdirs)
  defaults = experiment_defaults(data) if metric is None or curves is None else None
  metric = metric or defaults.metric
  report = analyze(data, metric, group_by=group_by, noise_field=noise_field,
                   higher_is_better=higher_is_better, thresholds=thresholds,
                   select_by=select_by)
  if curves is None:
    curves = [c for c in dict.fromkeys([*defaults.curves, metric]) if c in data.curve_metrics]
  elif data.curve_metrics:
    unknown = [c for c in curves if c not in data.curve_metrics]
    if unknown:
      raise UsageError(f"--curves: {', '.join(unknown)} not in {fmt.METRICS_FILE}; "
                       f"available: {', '.join(data.curve_metrics)}.")
  out = out or os.path.join(workdirs[0], "report")
  os.makedirs(out, exist_ok=True)
  figures, notes = [], []
  if plots:
    from gradnoise.report import plots as plots_lib  # matplotlib: only when plotting
    figures = plots_lib.plot_curves(report, out, curves)
    diagnostics = plots_lib.plot_diagnostics(report, out)
    if not diagnostics:
      notes.append(f"No noise diagnostics in {fmt.METRICS_FILE} "
                   f"({', '.join(n for n, _ in plots_lib.DIAGNOSTICS)}): no diagnostics "
                   "figure.")
    final = plots_lib.plot_final(report, out)
    figures += diagnostics + ([final] if final else [])
  text = to_markdown(report, figures, notes)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(text)
  write_summary_csv(report, os.path.join(out, "summary.csv"))
  return text
