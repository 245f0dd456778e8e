"""Grouping runs: settings (runs equal in every field that varies, noise and seed aside),
noise arms within a setting, and the key that pairs a noise run with its no-noise run."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from gradnoise.errors import UsageError
from gradnoise.report.load import Run, SweepData, leaves
from gradnoise.results_format import EXECUTION_FIELDS

# noise.schedule (default annealed) -> the field holding its noise level, as the trainer reads it.
SCHEDULE_FIELD, DEFAULT_SCHEDULE = "noise.schedule", "annealed"
SCHEDULE_NOISE_FIELDS = {"annealed": "noise.eta", "constant": "noise.std"}
# noise.kind (default gaussian, whose level field is its schedule's) -> its level field.
KIND_FIELD, GAUSSIAN = "noise.kind", "gaussian"
KIND_NOISE_FIELDS = {"langevin": "noise.temperature", "anticorrelated": "noise.sigma",
                     "multiplicative": "noise.sigma", "relative": "noise.sigma",
                     "perturbed": "noise.radius", "weight": "noise.sigma"}
NOISE_PREFIX = "noise."  # runs differing only in these fields (and nothing else) are paired
# An arm's (level, level field, noise.kind, its other noise.* fields that differ between runs).
_NoiseKey = tuple[float, str, str, tuple[tuple[str, Any], ...]]


@dataclasses.dataclass(frozen=True)
class Arm:
  """The runs of one setting with one noise level of one field and noise.kind (0: no
  noise, field and kind ""), and the values of the other noise.* fields that differ
  between the runs (e.g. perturbed GD's ``noise.wait``): ``extras``, (field, value) pairs."""

  noise: float
  field: str
  label: str
  runs: list[Run]
  kind: str = ""
  extras: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Setting:
  """Runs sharing the values of the grouping fields; arms by increasing noise."""

  label: str
  values: dict[str, Any]
  arms: list[Arm]


def hashable(value: Any) -> Any:
  """A config value (lists and dicts included) as a dict key."""
  if isinstance(value, list):
    return tuple(hashable(v) for v in value)
  if isinstance(value, dict):
    return tuple(sorted((k, hashable(v)) for k, v in value.items()))
  return value


def fmt_value(value: Any) -> str:
  """A config value as the labels and summary.csv show it."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return f"{value:g}"
  return "none" if value is None else str(value)


def setting_fields(data: SweepData) -> list[str]:
  """The fields that tell runs apart, seed and ``EXECUTION_FIELDS`` (e.g. two work dirs run
  with different train.runs_per_batch) excluded: the swept fields (first-seen order), then
  every other field whose value differs between the runs (work dirs with different base
  configs)."""
  configs = {id(r.config): r.config for r in data.runs}
  others = dict.fromkeys(f for c in configs.values() for f in leaves(c) if f not in data.swept)
  skip = {"seed", *EXECUTION_FIELDS}
  return [f for f in data.swept if f not in skip] + [
      f for f in others if f not in skip and len({hashable(r.get(f)) for r in data.runs}) > 1]


def pair_key(run: Run, fields: Sequence[str]) -> tuple[Any, ...]:
  """What a noise run shares with the no-noise run it is paired with: the seed and every
  one of ``fields`` that is not a noise field."""
  return (hashable(run.seed),) + tuple(hashable(run.get(f)) for f in fields
                                       if not f.startswith(NOISE_PREFIX))


def check_field(data: SweepData, field: str, flag: str) -> None:
  """UsageError unless ``field`` is swept or in a base config."""
  if field not in data.known_fields:
    raise UsageError(f"{flag}: unknown field {field!r}; known fields: "
                     f"{', '.join(sorted(data.known_fields))}.")


def level_source(run: Run) -> tuple[str, str]:
  """The field holding the run's noise level and what chose it (``noise.kind=...``, or for
  gaussian noise ``noise.schedule=...``); UsageError for an unknown kind or schedule."""
  kind = run.get(KIND_FIELD) or GAUSSIAN
  if kind != GAUSSIAN:
    if kind not in KIND_NOISE_FIELDS:
      raise UsageError(f"run {run.run} of {run.workdir} has {KIND_FIELD}={kind!r}, whose "
                       f"noise field is unknown (known kinds: {GAUSSIAN}, "
                       f"{', '.join(KIND_NOISE_FIELDS)}); give it with --noise_field.")
    return KIND_NOISE_FIELDS[kind], f"{KIND_FIELD}={kind}"
  schedule = run.get(SCHEDULE_FIELD) or DEFAULT_SCHEDULE
  if schedule not in SCHEDULE_NOISE_FIELDS:
    raise UsageError(f"run {run.run} of {run.workdir} has {SCHEDULE_FIELD}={schedule!r}, "
                     f"whose noise field is unknown (known schedules: "
                     f"{', '.join(SCHEDULE_NOISE_FIELDS)}); give it with --noise_field.")
  return SCHEDULE_NOISE_FIELDS[schedule], f"{SCHEDULE_FIELD}={schedule}"


def noise_fields(noise_field: str | None) -> tuple[str, ...]:
  """The fields that make the noise arms, never settings: ``noise_field``, else the
  kind, the schedule and every kind's and schedule's level field."""
  if noise_field:
    return (noise_field,)
  return (KIND_FIELD, SCHEDULE_FIELD, *SCHEDULE_NOISE_FIELDS.values(),
          *KIND_NOISE_FIELDS.values())


def _noise(run: Run, noise_field: str | None, extra_fields: Sequence[str]) -> _NoiseKey:
  """The run's noise level, its field (``noise_field``, else :func:`level_source`'s), its
  noise.kind and its values of ``extra_fields``; 0, "", "", () without noise."""
  field = noise_field or level_source(run)[0]
  value = run.get(field)
  try:
    noise = 0.0 if value is None else float(value)
  except (TypeError, ValueError):
    raise UsageError(f"noise field {field}: run {run.run} of {run.workdir} has the "
                     f"non-numeric value {value!r}.") from None
  if not noise:
    return 0.0, "", "", ()
  extras = tuple((f, hashable(run.get(f))) for f in extra_fields if f != field)
  return noise, field, run.get(KIND_FIELD) or GAUSSIAN, extras


def arm_order(arm: Arm) -> tuple[bool, str, str, float, str]:
  """Sort key of arms: no noise first, then by kind, field, level and other noise fields."""
  return arm.noise != 0, arm.kind, arm.field, arm.noise, repr(arm.extras)


def group_runs(data: SweepData, group_by: Sequence[str] | None = None,
               noise_field: str | None = None) -> tuple[list[str], list[Setting]]:
  """Settings (first-seen order) of every run, and the fields they are grouped on.

  ``noise_field`` None: each run's noise level is the field of its ``noise.kind``, for
  gaussian noise of its ``noise.schedule`` (:func:`level_source`).
  ``group_by`` defaults to :func:`setting_fields` (the swept fields and any other field
  that differs between the runs, base configs included) less every ``noise.*`` field:
  those make arms, so that a setting's arms differ in the noise alone and pair with its
  no-noise arm. Seed and the level fields (:func:`noise_fields`) never group. Arms are
  labelled "no noise" and "noise", or "noise (<field> <level>)" where levels differ, or
  "<kind> (<field> <level>)" where other kinds than gaussian noise are present; the other
  noise.* fields that differ between runs of one kind follow the level (e.g. "perturbed
  (radius 30, wait 10)").
  """
  if noise_field and any(r.config for r in data.runs):  # else only swept fields are known
    check_field(data, noise_field, "--noise_field")
  differing = setting_fields(data)
  if group_by is None:
    group_by = [f for f in differing if not f.startswith(NOISE_PREFIX)]
  for field in group_by:
    check_field(data, field, "--group_by")
  skip = {"seed", *noise_fields(noise_field)}
  fields = [f for f in dict.fromkeys(group_by) if f not in skip]
  extra_fields = [f for f in differing
                  if f.startswith(NOISE_PREFIX) and f not in skip and f not in fields]
  by_key: dict[tuple[Any, ...], tuple[dict[str, Any], dict[_NoiseKey, list[Run]]]] = {}
  for run in data.runs:
    values = {f: run.get(f) for f in fields}
    key = tuple(hashable(v) for v in values.values())
    by_key.setdefault(key, (values, {}))[1].setdefault(
        _noise(run, noise_field, extra_fields), []).append(run)
  levels = {n for _, arms in by_key.values() for n in arms if n[0]}
  kinds = {kind for _, _, kind, _ in levels}
  # The extra fields worth naming: those with more than one value within a kind.
  varying = {(kind, f) for kind in kinds for f in extra_fields
             if len({dict(e)[f] for _, _, k, e in levels if k == kind}) > 1}

  def label(noise: float, field: str, kind: str, extras: tuple) -> str:
    if not noise:
      return "no noise"
    shown = "".join(f", {f.rsplit('.', 1)[-1]} {fmt_value(v)}" for f, v in extras
                    if (kind, f) in varying)
    level = f"{field.rsplit('.', 1)[-1]} {noise:g}{shown}"
    if kinds == {GAUSSIAN}:
      return "noise" if len(levels) == 1 else f"noise ({level})"
    return f"{kind} ({level})"

  settings = []
  for values, arms in by_key.values():
    setting = ", ".join(f"{f}={fmt_value(v)}" for f, v in values.items()) or "all runs"
    settings.append(Setting(setting, values, sorted(
        (Arm(noise, field, label(noise, field, kind, extras), runs, kind, extras)
         for (noise, field, kind, extras), runs in arms.items()), key=arm_order)))
  return fields, settings
