"""Test setup: the repository's config files importable as ``configs`` (gradnoise loads
config files by path and does not install them), and a temporary compilation cache."""

import atexit
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# gradnoise.run's persistent compilation cache goes to a temporary folder, not the home dir.
CACHE = os.path.join(tempfile.gettempdir(), f"gradnoise-test-cache-{os.getpid()}")
if "GRADNOISE_COMPILATION_CACHE" not in os.environ:
  os.environ["GRADNOISE_COMPILATION_CACHE"] = CACHE
  atexit.register(shutil.rmtree, CACHE, ignore_errors=True)
