"""Paper-style tables and plots of sweep results: ``python -m gradnoise.report WORKDIR...``.

Reads each work dir's ``results.csv`` (final metrics of finished runs), ``metrics.jsonl``
(curves) and ``config.json`` (the settings of runs not finished yet; the format:
:mod:`gradnoise.results_format`), groups the runs into settings (every field that differs
between them, base configs included, other than seed and the ``noise.*`` fields, which
make the arms: a kind's other fields such as perturbed GD's ``noise.wait`` split arms, not
settings) and compares each noise arm with no noise: a summary table, threshold counts, paired tests (a noise run against
the no-noise run that differs from it in noise fields only), curves over training steps,
noise diagnostics over epochs and the distribution of final values; with ``--select_by``
(e.g. train_error) also each arm's best of k restarts by that metric. A run's noise level
is the field its ``noise.kind`` uses (``noise.sigma``, ``noise.temperature``,
``noise.radius``; for gaussian noise its ``noise.schedule``'s: ``noise.eta`` annealed,
``noise.std`` constant) unless a field is given. The metric and curves default to those the experiment declares.
Works on a sweep that is still running.

Modules, one job each: :mod:`~gradnoise.report.load` (work dirs), ``group`` (settings,
arms, pairing), ``stats`` (statistics), ``defaults`` (the experiment's metric and curves),
``render`` (Markdown, CSV), ``plots`` (PNGs; the only one importing matplotlib, and only
when plotting), ``make`` (one report), ``__main__`` (the command line).
"""

from gradnoise.report.defaults import Defaults, experiment_defaults
from gradnoise.report.group import Arm, Setting, group_runs
from gradnoise.report.load import Run, SweepData, load_runs
from gradnoise.report.make import make_report
from gradnoise.report.render import arm_labels, to_markdown, write_summary_csv
from gradnoise.report.stats import (ArmStats, PairStats, Report, analyze, lower_is_better,
                                    select_run)

__all__ = ["Arm", "ArmStats", "Defaults", "PairStats", "Report", "Run", "Setting",
           "SweepData", "analyze", "arm_labels", "experiment_defaults", "group_runs",
           "load_runs", "lower_is_better", "make_report", "select_run", "to_markdown",
           "write_summary_csv"]
