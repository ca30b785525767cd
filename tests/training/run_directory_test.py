"""The run directory's lock and writability check, in-process: a live
holder is refused, a dead one's lock (kill -9) or a reused pid's is taken
over, only our own lock is removed (the CLI-level cases are in
reliability_test.py)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from prompt_tuning.training import run_directory


def _lock(model_dir, **holder):
  path = os.path.join(model_dir, run_directory.LOCK_FILE)
  with open(path, "w") as f:
    json.dump(dict({"host": socket.gethostname(),
                    "started": "2024-01-01 00:00:00"}, **holder), f)
  return path


def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_the_lock_is_held_for_the_run_and_removed_after(tmp_path):
  path = os.path.join(tmp_path, run_directory.LOCK_FILE)
  with run_directory.hold(str(tmp_path)):
    with open(path) as f:
      holder = json.load(f)
    assert holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname()
    # The same directory again, even from this process: refused.
    with pytest.raises(RuntimeError, match=rf"in use by another run \(pid "
                       rf"{os.getpid()} on host"):
      with run_directory.hold(str(tmp_path)):
        pass
  assert not os.path.exists(path)


def test_a_live_holder_is_refused_and_its_lock_kept(tmp_path):
  parent = os.getppid()  # alive for as long as this test runs
  path = _lock(tmp_path, pid=parent,
               start_time=run_directory._start_time(parent))
  with open(path) as f:
    before = f.read()
  with pytest.raises(RuntimeError, match=rf"pid {parent} on host"):
    with run_directory.hold(str(tmp_path)):
      pass
  with open(path) as f:
    assert f.read() == before


@pytest.mark.parametrize("holder", ["dead", "reused_pid", "unreadable"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, holder, caplog):
  if holder == "dead":
    path = _lock(tmp_path, pid=_dead_pid(), start_time=None)
  elif holder == "reused_pid":
    # A live pid whose process started at another time than the holder's.
    path = _lock(tmp_path, pid=os.getppid(), start_time="1")
  else:
    path = os.path.join(tmp_path, run_directory.LOCK_FILE)
    with open(path, "w") as f:
      f.write('{"host": ')
    os.utime(path, (0, 0))  # long ago: not a run writing it right now
  with run_directory.hold(str(tmp_path)):
    with open(path) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert "Took over the stale lock" in caplog.text
  assert not os.path.exists(path)
  assert os.listdir(tmp_path) == []


def test_another_hosts_lock_is_refused(tmp_path):
  path = _lock(tmp_path, host="elsewhere", pid=1)
  with pytest.raises(RuntimeError, match=rf"cannot check that run: if it "
                     rf"is dead, remove {path}"):
    with run_directory.hold(str(tmp_path)):
      pass
  assert os.path.exists(path)


def test_processes_other_than_0_take_no_lock(tmp_path):
  _lock(tmp_path, host="elsewhere", pid=1)
  with run_directory.hold(str(tmp_path), writer=False):
    pass


def test_check_writable(tmp_path):
  with pytest.raises(OSError, match="MODEL_DIR is not set"):
    run_directory.check_writable("")
  (tmp_path / "file").write_text("x")
  with pytest.raises(OSError, match=r"is not usable: .*file is a file, not a "
                     r"directory"):
    run_directory.check_writable(str(tmp_path / "file" / "run"))
  run_directory.check_writable(str(tmp_path / "new" / "run"))
  assert os.listdir(tmp_path / "new" / "run") == []
