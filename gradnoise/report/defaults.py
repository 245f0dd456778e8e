"""The report's defaults from the experiment that wrote the work dirs: its summary metric
and the metrics.jsonl curves it declares (``Experiment.summary_metric``, ``.curves``)."""

from __future__ import annotations

import dataclasses

from gradnoise.report.load import SweepData, warn


@dataclasses.dataclass(frozen=True)
class Defaults:
  """The metric to tabulate and the metrics to plot over steps."""

  metric: str
  curves: tuple[str, ...]


# For work dirs that name no experiment (or one that cannot be imported here).
FALLBACK = Defaults("test_accuracy", ("train_loss", "test_accuracy"))


def experiment_defaults(data: SweepData) -> Defaults:
  """The defaults of the experiment named by the runs' config field ``experiment``
  (the first, with a warning, if they name several); :data:`FALLBACK` with a one-line
  warning if it cannot be loaded here, silently if none is named."""
  names = list(dict.fromkeys(r.get("experiment") for r in data.runs if r.get("experiment")))
  if not names:
    return FALLBACK
  if len(names) > 1:
    warn(f"the work dirs hold runs of several experiments ({', '.join(names)}); defaults "
         f"from {names[0]}.")
  try:
    from gradnoise import experiment  # jax and the experiment's own imports: only here
    loaded = experiment.load(names[0])
  except Exception as e:  # noqa: BLE001 - whatever stops the import, the flags still work
    reason = (str(e).splitlines() or [""])[0]
    warn(f"experiment {names[0]!r} cannot be loaded here ({type(e).__name__}: {reason}); "
         f"defaults: --metric={FALLBACK.metric} --curves={','.join(FALLBACK.curves)}.")
    return FALLBACK
  return Defaults(loaded.summary_metric, tuple(loaded.curves))
