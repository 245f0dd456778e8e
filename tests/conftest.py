"""Test setup: the repository's config files importable as ``configs`` (gradnoise loads
config files by path and does not install them), a temporary compilation cache, and a
local HTTP mirror for the download tests."""

import atexit
import functools
import http.server
import os
import shutil
import socket
import sys
import tempfile
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# gradnoise.run's persistent compilation cache goes to a temporary folder, not the home dir.
CACHE = os.path.join(tempfile.gettempdir(), f"gradnoise-test-cache-{os.getpid()}")
if "GRADNOISE_COMPILATION_CACHE" not in os.environ:
  os.environ["GRADNOISE_COMPILATION_CACHE"] = CACHE
  atexit.register(shutil.rmtree, CACHE, ignore_errors=True)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
  """A local HTTP server of a folder: (folder, its URL, the paths requested)."""
  folder = tmp_path / "mirror"
  folder.mkdir()
  requested = []

  class Handler(http.server.SimpleHTTPRequestHandler):

    def do_GET(self):
      requested.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
  threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                   daemon=True).start()
  for name in ("no_proxy", "NO_PROXY"):
    monkeypatch.setenv(name, "*")
  yield folder, f"http://127.0.0.1:{server.server_port}/", requested
  server.shutdown()
  server.server_close()


def closed_url():
  """The URL of a local port that nobody listens on: connections are refused."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{s.getsockname()[1]}/"
