r"""Trains a sweep of runs defined by a config file.

    python -m gradnoise.run --config configs/mnist_mlp.py:quick --workdir /tmp/quick \
        [--config.noise.gamma=0.5 ...] [--no_sweep] [--overwrite] [--accept_env_change] \
        [--dry_run]

The config file defines ``get_config(arg)`` and, for variants that sweep, ``get_sweep(arg)``
(a list of override dicts, see gradnoise.sweep). ``--config.a.b=value`` overrides the base
config; a field may not be set both on the command line and by the sweep. ``--no_sweep``
runs the base config alone. Bad input prints one ``error:`` line, writes nothing and exits
with code 2. The work is done by :mod:`gradnoise.launch`; this module parses flags and,
owning its process, sets what must precede JAX's start: the host (CPU) device count
(``--host_devices``, :mod:`gradnoise.devices`), the multi-process runtime and the
persistent compilation cache.
"""

from __future__ import annotations

import contextlib
import errno
import logging as pylogging
import os
import re
import sys
import threading
from typing import Sequence, TextIO

from absl import flags, logging

from gradnoise import devices
from gradnoise import overrides as overrides_lib
from gradnoise.errors import UsageError

DEFAULT_COMPILATION_CACHE = "~/.cache/gradnoise/jax-compilation-cache"
USAGE = ("usage: python -m gradnoise.run --config=FILE.py[:VARIANT] --workdir=DIR "
         "[--config.a.b=VALUE ...] [--no_sweep] [--overwrite] [--accept_env_change] "
         "[--dry_run]")


def _define_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("config", None, "Config file, path[:variant] (relative to the current "
                      "directory).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Directory for config.json, results.csv, "
                      "metrics.jsonl, tensorboard/ and checkpoints/: new, empty, or a "
                      "gradnoise work dir.", flag_values=fv)
  flags.DEFINE_bool("no_sweep", False, "Run the base config alone, without its sweep.",
                    flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Replace a work dir that holds a different sweep: "
                    "removes only the files gradnoise wrote there.", flag_values=fv)
  flags.DEFINE_bool("accept_env_change", False, "Resume although jax, jaxlib, the backend, "
                    "the PRNG settings or the device count changed since the work dir was "
                    "started (the change is recorded in config.json).", flag_values=fv)
  flags.DEFINE_bool("dry_run", False, "Check everything and print the plan; write nothing.",
                    flag_values=fv)
  flags.DEFINE_string("compilation_cache", os.environ.get(
      "GRADNOISE_COMPILATION_CACHE", DEFAULT_COMPILATION_CACHE), "Folder of JAX's persistent "
      "compilation cache, so that a resume or a repeat of the same shapes does not recompile; "
      "'none' turns it off (default from $GRADNOISE_COMPILATION_CACHE; a cache folder set "
      "through JAX's own JAX_COMPILATION_CACHE_DIR wins).", flag_values=fv)
  flags.DEFINE_string("host_devices", "auto", "CPU devices to split the host into (the run "
                      "axis is sharded over them): 'auto' gives one per core with at least "
                      f"{devices.MIN_RUNS_PER_DEVICE} runs at once on each (see "
                      "gradnoise/devices.py), or a count; XLA_FLAGS="
                      f"{devices.HOST_DEVICE_FLAG}=N or JAX_NUM_CPU_DEVICES set by the user "
                      "win over 'auto'. No effect on accelerators.", flag_values=fv)
  flags.DEFINE_bool("distributed", False, "Multi-process run: call "
                    "jax.distributed.initialize() with its cluster auto-detection (SLURM, "
                    "Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS).", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "Multi-process run: host:port of "
                      "process 0.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Multi-process run: number of processes.",
                       flag_values=fv)
  flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index.",
                       flag_values=fv)
  return fv


def _help(args: Sequence[str], out: TextIO) -> None:
  from gradnoise import launch
  print(USAGE, file=out)
  print(__doc__.split("\n\n", 2)[2].strip(), file=out)
  print("\nflags:", file=out)
  fv = _define_flags()
  for name in fv:
    print(f"  --{name}: {fv[name].help}", file=out)
  spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  if spec is None and "--config" in args[:-1]:
    spec = args[args.index("--config") + 1]
  if spec:
    try:
      names = launch.variants(spec)
      listed = ", ".join(names) if names else "(none listed in VARIANTS)"
    except UsageError as e:
      listed = f"(cannot tell: {e})"
    print(f"\nvariants of {spec.partition(':')[0]}: {listed}", file=out)


def _init_compilation_cache(folder: str) -> None:
  """Points JAX's persistent compilation cache at ``folder`` unless 'none' or already set."""
  import jax
  if folder.lower() == "none" or jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.expanduser(folder)))


def _multi_process(fv: flags.FlagValues) -> bool:
  explicit = (fv.coordinator_address, fv.num_processes, fv.process_id)
  return fv.distributed or any(v is not None for v in explicit)


def _init_distributed(fv: flags.FlagValues) -> None:
  """Starts JAX's multi-controller runtime when asked to (before any computation)."""
  if not _multi_process(fv):
    return
  explicit = (fv.coordinator_address, fv.num_processes, fv.process_id)
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only clusters
  jax.distributed.initialize(*explicit)


def _parse(argv: Sequence[str]) -> tuple[flags.FlagValues, dict[str, str]]:
  args, cli = overrides_lib.split_args(argv[1:])
  fv = _define_flags()
  try:
    rest = fv([argv[0] if argv else "gradnoise.run", *args])
  except flags.Error as e:
    raise UsageError(f"{e}; {USAGE}") from None
  if len(rest) > 1:
    raise UsageError(f"unexpected arguments {rest[1:]}; pass options as --flag=value.")
  if fv.config is None:
    raise UsageError(f"--config is required: a config file, path[:variant]. {USAGE}")
  if fv.workdir is None:
    raise UsageError("--workdir is required: the directory for the sweep's outputs.")
  return fv, cli


def _run(argv: Sequence[str], out: TextIO) -> int:
  from gradnoise import experiment as experiment_lib
  from gradnoise import fields, launch, trainer
  fv, cli = _parse(argv)
  config, get_sweep, _ = launch.load_config_file(fv.config)
  name = cli.get("experiment", config.get("experiment"))
  try:
    declared = {**trainer.FIELDS, **experiment_lib.load(name).fields}
  except UsageError:
    declared = dict(trainer.FIELDS)  # prepare() reports the experiment itself
  config = overrides_lib.apply(fields.complete(config, declared), cli, declared,
                               origin=fv.config)
  sweep = [] if fv.no_sweep else get_sweep()
  if fv.host_devices != "auto" or not _multi_process(fv):  # before JAX starts its backends
    devices.configure(fv.host_devices, devices.largest_batch(config, sweep), fv.workdir)
  _init_distributed(fv)
  _init_compilation_cache(fv.compilation_cache)
  prepared = launch.prepare(config, sweep, config_file=fv.config, cli_fields=tuple(cli))
  launch.train(prepared, fv.workdir, overwrite=fv.overwrite,
               accept_env_change=fv.accept_env_change, dry_run=fv.dry_run, out=out)
  return 0


def _os_error(e: BaseException) -> OSError | None:
  """The OS error behind ``e``, following __cause__ / __context__, or None.

  Besides Python's OSError, it recognises the OS errors that tensorstore (orbax's storage)
  reports inside other exceptions (``... [os_error_code='28']``) and ``[Errno 28] ...``.
  """
  if isinstance(e, UsageError):
    return None
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError) and e.errno is not None:
      return e
    text = str(e)
    match = (re.search(r"\[Errno (\d+)\]", text)
             or re.search(r"os_error_code='?(\d+)", text))
    if match:
      path = re.search(r'"(/[^"]+)"', text)
      code = int(match.group(1))
      return OSError(code, os.strerror(code), path.group(1) if path else None)
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


_OS_ERROR_TEXT = re.compile(r"\[Errno \d+\]|os_error_code=")


class _DropOSErrorRecords(pylogging.Filter):
  """Drops log records about an OS error: main() reports it in one line."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return not _OS_ERROR_TEXT.search(record.getMessage())


@contextlib.contextmanager
def _os_errors_reported_once():
  """Silences the echoes of an OS error in orbax's writer threads while main() runs.

  orbax logs a failed write (e.g. a full disk) from each of its threads, and its closed
  event loops print "Event loop is closed" tracebacks; main() reports the error itself.
  """
  absl_logger = pylogging.getLogger("absl")
  drop = _DropOSErrorRecords()
  absl_logger.addFilter(drop)
  previous_hook, previous_thread_hook = sys.excepthook, threading.excepthook

  def echo(value: BaseException | None) -> bool:
    return (isinstance(value, RuntimeError) and "Event loop is closed" in str(value)
            or _os_error(value) is not None
            or isinstance(value, ValueError) and "handle is closed" in str(value))

  def hook(kind, value, traceback):
    if not echo(value):
      previous_hook(kind, value, traceback)

  def thread_hook(args):
    if not echo(args.exc_value):
      previous_thread_hook(args)

  sys.excepthook, threading.excepthook = hook, thread_hook
  try:
    yield
  finally:
    sys.excepthook, threading.excepthook = previous_hook, previous_thread_hook
    absl_logger.removeFilter(drop)


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
  """Runs the command line ``argv`` (argv[0] is the program); returns the exit code.

  0: done (or help shown); 2: bad input or an operating-system error while reading or
  writing, reported as one ``error:`` line on ``err`` (nothing written for bad input;
  rerunning the same command after an OS error resumes).
  """
  out, err = out or sys.stdout, err or sys.stderr
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  args = list(argv[1:])
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in args):
    _help(args, out)
    return 0
  try:
    with _os_errors_reported_once():
      return _run(argv, out)
  except UsageError as e:
    print(f"error: {e}", file=err)
    return 2
  except Exception as e:  # noqa: BLE001 - OS errors, however deep they were raised
    os_error = _os_error(e)
    if os_error is None:
      raise
    if os_error.errno == errno.EPIPE:  # our output's reader went away (e.g. `| head`)
      return 2
    workdir = next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")), None)
    where = (f"{os_error.filename}: " if os_error.filename
             else f"writing in the work dir {workdir}: " if workdir else "")
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
            errno.EACCES: "fix the permissions", errno.EPERM: "fix the permissions",
            errno.EROFS: "choose a writable location"}.get(os_error.errno, "fix the cause")
    print(f"error: {where}{os_error.strerror or os.strerror(os_error.errno)} "
          f"(errno {os_error.errno}); {hint}, then run the same command again to resume.",
          file=err)
    return 2


def cli() -> None:
  sys.exit(main(sys.argv))


if __name__ == "__main__":
  cli()
