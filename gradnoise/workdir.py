"""A sweep's work directory: config.json, results.csv, metrics.jsonl (atomic writes)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import tempfile
from typing import Any, Sequence

import ml_collections

from gradnoise.errors import UsageError
from gradnoise.sweep import get_field

CONFIG_FILE, RESULTS_FILE, METRICS_FILE = "config.json", "results.csv", "metrics.jsonl"
RESULT_METRICS = ("test_accuracy", "best_test_accuracy", "train_loss")


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` so that a reader sees the old or the new file, never half."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def sweep_record(config: ml_collections.ConfigDict, sweep: Sequence[dict[str, Any]],
                 config_file: str) -> dict[str, Any]:
  """What config.json holds: the resolved config, the sweep, versions and PRNG settings."""
  import jax
  import optax
  return {
      "config": config.to_dict(),
      "sweep": [dict(o) for o in sweep],
      "config_file": config_file,
      "versions": {"jax": jax.__version__, "optax": optax.__version__,
                   "python": platform.python_version()},
      "prng": {"impl": str(jax.config.jax_default_prng_impl),
               "threefry_partitionable": bool(jax.config.jax_threefry_partitionable)},
      "backend": jax.default_backend(),
  }


def _comparable(record: dict[str, Any]) -> str:
  return json.dumps({"config": record["config"], "sweep": record["sweep"]}, sort_keys=True,
                    default=str)


def format_value(value: Any) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value) if math.isfinite(value) else str(value)
  return str(value)


class WorkDir:
  """The files of one sweep."""

  def __init__(self, path: str):
    self.path = path

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def stored_record(self) -> dict[str, Any] | None:
    path = self.file(CONFIG_FILE)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise UsageError(f"work dir file {path} is unreadable ({e}); use --overwrite to "
                       "start the sweep afresh.") from None

  def check(self, record: dict[str, Any], overwrite: bool) -> None:
    """Refuses a work dir that holds a different sweep, unless ``overwrite``."""
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise UsageError(f"--workdir {self.path} is a file; accepted: a directory path.")
    stored = self.stored_record()
    if stored is not None and not overwrite and _comparable(stored) != _comparable(record):
      raise UsageError(f"--workdir {self.path} holds a different config or sweep "
                       f"({stored.get('config_file')}); pass --overwrite to replace it, "
                       "or choose another work dir.")

  def start(self, record: dict[str, Any], resume: bool) -> None:
    """Creates the work dir with config.json; without ``resume``, from scratch."""
    if not resume:
      self.remove()
    os.makedirs(self.path, exist_ok=True)
    write_atomic(self.file(CONFIG_FILE), json.dumps(record, indent=2, default=str) + "\n")
    if not os.path.exists(self.file(METRICS_FILE)):
      open(self.file(METRICS_FILE), "w").close()

  def read_results(self) -> dict[int, dict[str, Any]]:
    """Results of the runs already finished (from results.csv; empty if none)."""
    path = self.file(RESULTS_FILE)
    if not os.path.exists(path):
      return {}
    with open(path, newline="") as f:
      rows = list(csv.reader(f))
    header = rows[0]
    first_metric = header.index("seed") + 1
    results = {}
    for row in rows[1:]:
      result = {k: float(v) for k, v in zip(header[first_metric:-1], row[first_metric:-1])}
      result["diverged"] = row[-1] == "true"
      results[int(row[0])] = result
    return results

  def truncate_metrics(self, run_ids: Sequence[int], keep_through_epoch: int) -> None:
    """Drops metric rows of ``run_ids`` after ``keep_through_epoch`` (before a resume)."""
    ids = set(run_ids)
    kept = []
    with open(self.file(METRICS_FILE)) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a kill
        if row["run"] not in ids or row["epoch"] <= keep_through_epoch:
          kept.append(line if line.endswith("\n") else line + "\n")
    write_atomic(self.file(METRICS_FILE), "".join(kept))

  def append_metrics(self, row: dict[str, Any]) -> None:
    with open(self.file(METRICS_FILE), "a") as f:
      f.write(json.dumps(row) + "\n")

  def write_results(self, fields: Sequence[str], runs: Sequence[ml_collections.ConfigDict],
                    results: dict[int, dict[str, Any]]) -> None:
    """results.csv: one row per finished run (its swept fields, seed, metrics, diverged)."""
    metrics = [m for m in RESULT_METRICS if any(m in r for r in results.values())]
    for result in results.values():
      metrics += [k for k in result if k not in metrics and k != "diverged"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(fields) + metrics + ["diverged"])
    for run_id in sorted(results):
      config, result = runs[run_id], results[run_id]
      row = [run_id] + [get_field(config, f) for f in fields[1:]]
      row += [result.get(m, float("nan")) for m in metrics] + [result["diverged"]]
      writer.writerow([format_value(v) for v in row])
    write_atomic(self.file(RESULTS_FILE), out.getvalue())

  def remove(self) -> None:
    shutil.rmtree(self.path, ignore_errors=True)


class TensorBoardWriter:
  """One TensorBoard event directory per run, ``<workdir>/tensorboard/run_<id>``.

  Uses tensorboardX, which writes event files without TensorFlow.
  """

  def __init__(self, directory: str):
    self.directory = directory
    self.writers: dict[int, Any] = {}

  def write(self, row: dict[str, Any]) -> None:
    from tensorboardX import SummaryWriter
    run = row["run"]
    if run not in self.writers:
      self.writers[run] = SummaryWriter(os.path.join(self.directory, f"run_{run}"))
    for name, value in row.items():
      if name not in ("run", "epoch", "step") and math.isfinite(value):
        self.writers[run].add_scalar(name, value, row["step"])

  def close(self) -> None:
    for writer in self.writers.values():
      writer.close()
    self.writers.clear()

