"""A sweep's work directory: what gradnoise writes there, and nothing else.

Files (all written atomically or appended line by line, with the umask's permissions):
``config.json`` (the resolved config, the sweep and the environment that decides the random
streams and the numerics), ``results.csv``, ``metrics.jsonl``, ``tensorboard/run_<id>/``
and ``checkpoints/runs_<a>-<b>/``.

Safety rules: a directory that exists and holds no ``config.json`` written by gradnoise is
used only if it is empty; ``--overwrite`` removes only the files and folders above; a
resume under a different environment (:func:`environment`) is refused unless accepted.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shutil
import time
import uuid
from typing import Any, Sequence

import ml_collections

from gradnoise import results_format
from gradnoise.errors import UsageError
from gradnoise.results_format import CONFIG_FILE, METRICS_FILE, RESULTS_FILE
from gradnoise.sweep import get_field

TENSORBOARD_DIR, CHECKPOINT_DIR = "tensorboard", "checkpoints"
LOCK_FILE = ".gradnoise.lock"
WRITER = "gradnoise"  # config.json's "written_by" marks a work dir as ours
_OWN_FILES = (CONFIG_FILE, RESULTS_FILE, METRICS_FILE, LOCK_FILE)
# What gradnoise writes inside its two folders: per-run TensorBoard folders holding event
# files, and per-batch checkpoint folders holding orbax step folders.
_OWN_SUBDIRS = {TENSORBOARD_DIR: (re.compile(r"run_\d+"), re.compile(r"events\.out\.tfevents\..*")),
                CHECKPOINT_DIR: (re.compile(r"runs_\d+-\d+"),
                                 re.compile(r"\d+(\.orbax-checkpoint-tmp.*)?"))}
_TEMP_PREFIX = ".gradnoise-tmp-"


class DamagedRecord(UsageError):
  """config.json of a gradnoise work dir that cannot be read."""


def _is_own_entry(path: str) -> bool:
  """A TensorBoard event file, or an orbax step folder (committed: it holds orbax's
  ``_CHECKPOINT_METADATA``; or unfinished: its name ends in ``.orbax-checkpoint-tmp...``)."""
  name = os.path.basename(path)
  if os.path.islink(path):
    return False
  if name.startswith("events.out.tfevents."):
    return os.path.isfile(path)
  return os.path.isdir(path) and (".orbax-checkpoint-tmp" in name or os.path.isfile(
      os.path.join(path, "_CHECKPOINT_METADATA")))


def _remove(path: str) -> None:
  """Deletes ``path`` if :func:`_is_own_entry` says gradnoise wrote it."""
  if not _is_own_entry(path):
    return
  if os.path.isdir(path):
    shutil.rmtree(path)
  else:
    os.unlink(path)


def _remove_if_empty(path: str) -> None:
  if not os.path.islink(path) and os.path.isdir(path) and not os.listdir(path):
    os.rmdir(path)


def resolve(path: str) -> str:
  """``path`` as an absolute path: ``~`` expanded, relative to the current directory."""
  return os.path.abspath(os.path.expanduser(path))


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` so that a reader sees the old or the new file, never half.

  The file gets the permissions the umask allows (0666 & ~umask), like ``open``.
  """
  tmp = os.path.join(os.path.dirname(path), f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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


def strict_json(value: Any) -> Any:
  """``value`` with non-finite floats as the strings "inf", "-inf", "nan" (strict JSON)."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, dict):
    return {k: strict_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json(v) for v in value]
  return value


def environment() -> dict[str, Any]:
  """What decides a sweep's random streams and numerics, besides its config.

  A run resumed under a different value of any of these would not continue the run it
  resumes (other noise, batch order or rounding), so :meth:`WorkDir.check` compares them.
  """
  import jax
  import jaxlib
  import optax

  import gradnoise
  config = jax.config
  return {
      "gradnoise": gradnoise.__version__,
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "optax": optax.__version__,
      "flax": _version("flax"),
      "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(),
      "prng_impl": str(config.jax_default_prng_impl),
      "threefry_partitionable": bool(config.jax_threefry_partitionable),
      "random_seed_offset": int(getattr(config, "jax_random_seed_offset", 0) or 0),
      "enable_x64": bool(config.jax_enable_x64),
      "default_matmul_precision": str(config.jax_default_matmul_precision),
  }


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def sweep_record(config: ml_collections.ConfigDict, sweep: Sequence[dict[str, Any]],
                 config_file: str, data_fingerprint: str = "",
                 experiment_source: str = "") -> dict[str, Any]:
  """What config.json holds: the resolved config, the sweep, the environment (with the
  SHA-256 of the data the runs train on and of the experiment's source file), versions."""
  return strict_json({
      "written_by": WRITER,
      "config": config.to_dict(),
      "sweep": [dict(o) for o in sweep],
      "config_file": config_file,
      "environment": {**environment(), "data": data_fingerprint,
                      "experiment_source": experiment_source},
      "python": platform.python_version(),
  })


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix.rstrip("."): d}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}."))
  return out


def _normal(value: Any) -> Any:
  return json.loads(json.dumps(strict_json(value), sort_keys=True, default=str))


def sweep_tag(record: dict[str, Any]) -> str:
  """SHA-256 of a record's config and sweep: stored in checkpoints, so that a checkpoint
  written by another sweep is never restored into this one."""
  text = json.dumps({"config": _normal(record["config"]), "sweep": _normal(record["sweep"])},
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def config_differences(stored: dict[str, Any], record: dict[str, Any]) -> list[str]:
  """The config fields and sweep entries that differ, as ``name: old -> new``."""
  old, new = _flat(_normal(stored.get("config"))), _flat(_normal(record["config"]))
  diffs = [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
           for k in sorted(set(old) | set(new)) if old.get(k, KeyError) != new.get(k, KeyError)]
  old_sweep, new_sweep = _normal(stored.get("sweep")), _normal(record["sweep"])
  if old_sweep != new_sweep:
    old_sweep, new_sweep = old_sweep or [], new_sweep or []
    if len(old_sweep) != len(new_sweep):
      diffs.append(f"sweep: {len(old_sweep)} -> {len(new_sweep)} runs")
    else:
      runs = [i for i, (a, b) in enumerate(zip(old_sweep, new_sweep)) if a != b]
      first = runs[0]
      diffs.append(f"sweep: {len(runs)} of {len(new_sweep)} runs differ (run {first}: "
                   f"{old_sweep[first]} -> {new_sweep[first]})")
  return diffs


def environment_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Entries of the environment that differ, as ``name old -> new``."""
  old = stored.get("environment")
  if old is None:  # written before the environment was recorded
    versions, prng = stored.get("versions", {}), stored.get("prng", {})
    old = {"jax": versions.get("jax"), "optax": versions.get("optax"),
           "backend": stored.get("backend"), "prng_impl": prng.get("impl"),
           "threefry_partitionable": prng.get("threefry_partitionable")}
    old = {k: v for k, v in old.items() if v is not None}
  return [f"{k} {old.get(k, '(not recorded)')} -> {current.get(k, '(absent)')}"
          for k in sorted(set(old) | set(current)) if old.get(k) != current.get(k)]


class WorkDir:
  """The files of one sweep in the directory ``path`` (made absolute)."""

  def __init__(self, path: str):
    self.given = path
    self.path = resolve(path)

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def stored_record(self) -> dict[str, Any] | None:
    """config.json if gradnoise wrote it; None if there is none; UsageError if foreign."""
    path = self.file(CONFIG_FILE)
    if not os.path.isfile(path):
      return None
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      if self._holds_only_own_entries():
        raise DamagedRecord(f"--workdir {self.path}: {path} is damaged ({e}); pass "
                            "--overwrite to restart the sweep there, or choose another work "
                            "dir.") from None
      raise UsageError(f"--workdir {self.path}: {path} is not a config.json written by "
                       f"gradnoise ({e}); gradnoise leaves that folder alone: choose a new "
                       "or empty directory.") from None
    ours = isinstance(record, dict) and (record.get("written_by") == WRITER or {
        "config", "sweep", "config_file", "versions", "prng"} <= set(record))
    if not ours:
      raise UsageError(f"--workdir {self.path}: {path} was not written by gradnoise; "
                       "gradnoise leaves that folder alone: choose a new or empty directory.")
    return record

  def _holds_only_own_entries(self) -> bool:
    entries = os.listdir(self.path)
    return bool(entries) and all(
        e in _OWN_FILES or e in _OWN_SUBDIRS or e.startswith(_TEMP_PREFIX) for e in entries)

  def check_location(self) -> None:
    """Raises UsageError unless the work dir can be created or written (writes nothing)."""
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise UsageError(f"--workdir {self.path} is a file, not a directory; accepted: a new "
                       "or empty directory, or a gradnoise work dir.")
    existing = self.path
    while not os.path.exists(existing):
      if os.path.islink(existing):
        raise UsageError(f"--workdir {self.path}: {existing} is a symbolic link to "
                         f"{os.readlink(existing)}, which does not exist; create it, or choose "
                         "another work dir.")
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
      raise UsageError(f"--workdir {self.path}: {existing} is a file, not a directory "
                       f"({os.strerror(errno.ENOTDIR)}).")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
      raise UsageError(f"--workdir {self.path}: {existing} is on a read-only file system "
                       f"({os.strerror(errno.EROFS)}); choose a writable location.")
    if not os.access(existing, os.W_OK | os.X_OK):
      raise UsageError(f"--workdir {self.path}: {existing} is not writable "
                       f"({os.strerror(errno.EACCES)}).")

  def check(self, record: dict[str, Any], overwrite: bool, accept_env_change: bool) -> bool:
    """Decides what the sweep may do with the work dir; writes nothing.

    Returns True to resume (same config and sweep), False to start afresh. Raises
    UsageError for a folder gradnoise did not write that is not empty, for a different
    config or sweep without ``overwrite``, and for a resume under another environment
    without ``accept_env_change``.
    """
    self.check_location()
    if not os.path.isdir(self.path):
      return False
    try:
      stored = self.stored_record()
    except DamagedRecord:
      if overwrite:
        return False
      raise
    if stored is None:
      entries = sorted(e for e in os.listdir(self.path) if e != LOCK_FILE)
      if entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5
                                          else "")
        raise UsageError(f"--workdir {self.path} is not empty ({shown}) and holds no "
                         "config.json written by gradnoise; gradnoise never deletes files it "
                         "did not write: choose a new or empty directory.")
      return False
    if overwrite:
      return False
    diffs = config_differences(stored, record)
    if diffs:
      raise UsageError(f"--workdir {self.path} holds a different sweep "
                       f"({stored.get('config_file')}): {'; '.join(diffs)}. Pass --overwrite "
                       "to replace gradnoise's files there, or choose another work dir.")
    changed = environment_differences(stored, record["environment"])
    if changed and not accept_env_change:
      raise UsageError(f"--workdir {self.path} was last run under another environment "
                       f"({'; '.join(changed)}); resuming would change the runs' random "
                       "streams or numerics. Choose a new work dir, or pass "
                       "--accept_env_change to resume anyway (recorded in config.json).")
    return True

  def lock(self) -> None:
    """Creates the work dir and takes its lock for the life of this process.

    Raises UsageError when another process holds it (two runs of one sweep would train the
    same runs twice and interleave their metrics).
    """
    os.makedirs(self.path, exist_ok=True)
    fd = os.open(self.file(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
      os.close(fd)
      raise UsageError(f"--workdir {self.path} is in use by another gradnoise process (pid "
                       f"{holder}); wait for it to end or stop it, then run the command "
                       "again.") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    self._lock_fd = fd

  def unlock(self) -> None:
    """Releases the lock taken by :meth:`lock` (the lock file stays: it is ours)."""
    fd, self._lock_fd = getattr(self, "_lock_fd", None), None
    if fd is not None:
      os.close(fd)

  def start(self, record: dict[str, Any], resume: bool) -> None:
    """Creates or resumes the work dir. Afresh, first removes gradnoise's own files."""
    if resume:
      stored = self.stored_record()
      changed = environment_differences(stored, record["environment"])
      if changed:
        record = {**stored, "environment": record["environment"],
                  "environment_changes": stored.get("environment_changes", []) + [
                      {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changes": changed}]}
      else:
        record = stored
    else:
      self.remove_own_files()
    os.makedirs(self.path, exist_ok=True)
    write_atomic(self.file(CONFIG_FILE), json.dumps(record, indent=2, allow_nan=False) + "\n")
    if not os.path.exists(self.file(METRICS_FILE)):
      open(self.file(METRICS_FILE), "w").close()

  def remove_own_files(self) -> None:
    """Deletes what gradnoise writes in the work dir, and nothing else.

    Inside ``tensorboard/`` and ``checkpoints/`` (followed when they are symbolic links,
    as when checkpoints live on scratch space) only event files and orbax step folders in
    per-run / per-batch folders go; folders left empty are removed, links are kept.
    """
    if not os.path.isdir(self.path):
      return
    for name in os.listdir(self.path):
      path = self.file(name)
      if name == LOCK_FILE:
        continue  # held by this process; removing it would let a second one in
      if (name in _OWN_FILES or name.startswith(_TEMP_PREFIX)) and not os.path.isdir(path):
        os.unlink(path)
      elif name in _OWN_SUBDIRS and os.path.isdir(path):
        folder_pattern, entry_pattern = _OWN_SUBDIRS[name]
        for folder in os.listdir(path):
          folder_path = os.path.join(path, folder)
          if folder_pattern.fullmatch(folder) and os.path.isdir(folder_path):
            for entry in os.listdir(folder_path):
              if entry_pattern.fullmatch(entry):
                _remove(os.path.join(folder_path, entry))
            _remove_if_empty(folder_path)
        _remove_if_empty(path)

  def read_results(self) -> dict[int, dict[str, Any]]:
    """Results of the runs already finished (from results.csv; empty if none)."""
    path = self.file(RESULTS_FILE)
    if not os.path.exists(path):
      return {}
    with open(path, newline="") as f:
      rows = list(csv.reader(f))
    try:
      header = rows[0]
      _, metrics = results_format.split_columns(header)
      results = {}
      for row in rows[1:]:
        if len(row) != len(header) or row[-1] not in ("true", "false"):  # diverged: last
          raise ValueError(f"line {rows.index(row) + 1} has {len(row)} cells: {row[:3]}")
        cells = dict(zip(header, row))
        result = {m: float(cells[m]) for m in metrics}
        result["diverged"] = row[-1] == "true"
        results[int(row[0])] = result
    except (IndexError, ValueError) as e:
      raise UsageError(f"--workdir {self.path}: {path} is damaged ({e or 'empty'}); restore "
                       "it, or pass --overwrite to restart the sweep.") from None
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
          continue  # a line cut by a kill or a full disk
        if row["run"] not in ids or row["epoch"] <= keep_through_epoch:
          kept.append(line if line.endswith("\n") else line + "\n")
    write_atomic(self.file(METRICS_FILE), "".join(kept))

  def append_metrics(self, row: dict[str, Any]) -> None:
    with open(self.file(METRICS_FILE), "a") as f:
      f.write(json.dumps(strict_json(row), allow_nan=False) + "\n")

  def write_results(self, swept: Sequence[str], runs: Sequence[ml_collections.ConfigDict],
                    results: dict[int, dict[str, Any]]) -> None:
    """results.csv (:mod:`gradnoise.results_format`): one row per finished run."""
    metrics = results_format.metric_columns(results.values())
    header = results_format.results_columns(swept, metrics)
    fields = header[1:header.index(results_format.SEED) + 1]  # the swept fields and seed
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for run_id in sorted(results):
      config, result = runs[run_id], results[run_id]
      row = [run_id] + [get_field(config, f) for f in fields]
      row += [result.get(m, float("nan")) for m in metrics] + [result["diverged"]]
      writer.writerow([results_format.format_cell(v) for v in row])
    write_atomic(self.file(RESULTS_FILE), out.getvalue())


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
      if name not in results_format.ROW_KEYS and math.isfinite(value):
        self.writers[run].add_scalar(name, value, row["step"])

  def close(self, failing: bool = False) -> None:
    """Flushes and closes the event files; with ``failing`` (another error is already
    being reported, e.g. a full disk), errors while closing are dropped."""
    writers, self.writers = list(self.writers.values()), {}
    for writer in writers:
      try:
        writer.close()
      except OSError:
        if not failing:
          raise
