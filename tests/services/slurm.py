"""A private SLURM cluster on this machine, for tests that submit real jobs.

`Cluster(directory).start()` makes a munge key and starts its own `munged`
(private socket, key, pid and log files under `directory`), writes a
`slurm.conf` there (one node, this host, declaring 8 CPUs whatever the
hardware has: `SlurmdParameters=config_overrides`; no accounting, no
cgroups) and starts `slurmctld` and `slurmd` on ports nobody else holds, then
waits until `sinfo` shows the node idle. Every command the tests run gets
`SLURM_CONF` (and the daemons `-f`) pointing at that file, so a system SLURM,
or a cluster a crashed earlier run left behind, is never talked to. Anything
that does not start raises `ClusterError` with the daemon's log: tests that
need SLURM fail, they never skip. `stop()` ends the daemons it started (by
their pids) and every job process they left.

`tests/services/install.sh` installs Debian's `slurm-wlm` and `munge` when
they are missing. The `slurm_cluster` fixture (module scope) gives a started
cluster and stops it after the module.
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

# Seconds between a requeue and the job's next start (AuthInfo cred_expire:
# SLURM's default is 120; a test has no stale credentials to wait out).
CRED_EXPIRE = 5
# Seconds between SIGTERM and SIGKILL when SLURM ends a job: what a train
# process has to finish its step, save and exit. SLURM's default is 30; on
# a loaded 2-core machine the exit alone (JAX's shutdown) took up to 50 s.
KILL_WAIT = 60
# CPUs the node declares (config_overrides: the hardware may have fewer):
# room for three 2-task jobs and an array task side by side.
NODE_CPUS = 8
NODE_MEMORY_MB = 8000
_DAEMONS = ("munged", "slurmctld", "slurmd")
INSTALL = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "install.sh")


class ClusterError(RuntimeError):
  """A part of the local cluster did not start or a job did not behave."""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("", 0))
    return s.getsockname()[1]


def _first_job_id(jobs: int = 32) -> int:
  """A first job id whose next `jobs` ids have free JAX coordinator ports.

  JAX's SLURM detection puts the coordinator on port 61440 + job id % 4096:
  two clusters (two test sessions on one machine) that both numbered their
  jobs from 1 would collide.
  """
  for _ in range(200):
    first = random.randrange(1000, 4_000_000)
    if (first % 4096) + jobs >= 4096:
      continue
    try:
      for job in range(first, first + jobs):
        with socket.socket() as s:
          s.bind(("", 61440 + job % 4096))
    except OSError:
      continue
    return first
  raise ClusterError("no free range of JAX coordinator ports (61440-65535)")


def _tail(path: str, chars: int = 3000) -> str:
  try:
    with open(path, errors="replace") as f:
      return f.read()[-chars:]
  except OSError:
    return f"({path} does not exist)"


class Cluster:
  """One slurmctld, one slurmd and their munged, all private to `directory`."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self.host = socket.gethostname()
    self.conf = os.path.join(self.directory, "slurm.conf")
    self.socket = os.path.join(self.directory, "munge", "munge.socket")
    self._processes: Dict[str, subprocess.Popen] = {}

  @property
  def env(self) -> Dict[str, str]:
    """os.environ with SLURM_CONF naming this cluster (and no job's SLURM_*
    variables: a test run inside a SLURM job must not inherit them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = self.conf
    return env

  def _log(self, name: str) -> str:
    return os.path.join(self.directory, "log", f"{name}.log")

  def _check_installed(self) -> None:
    missing = [tool for tool in ("munged", "mungekey", "slurmctld", "slurmd",
                                 "sbatch", "scontrol", "sinfo")
               if not shutil.which(tool, path=os.environ.get("PATH", "") +
                                   ":/usr/sbin:/sbin")]
    if missing:
      raise ClusterError(
          f"SLURM or munge is not installed (missing {', '.join(missing)}): "
          f"run `bash {os.path.relpath(INSTALL)}` (Debian: slurm-wlm, munge)")
    if os.geteuid() != 0:
      raise ClusterError("the local SLURM cluster runs its slurmd as root "
                         "(it starts jobs as their users): run the tests as "
                         "root, e.g. in the CI container")

  def _spawn(self, name: str, argv: Sequence[str]) -> None:
    log = open(self._log(name) + ".out", "w")  # pylint: disable=consider-using-with
    # Own session: stop() can end the daemon and whatever it forked.
    self._processes[name] = subprocess.Popen(
        list(argv), stdout=log, stderr=subprocess.STDOUT, env=self.env,
        start_new_session=True)
    log.close()

  def _start_munge(self) -> None:
    munge = os.path.join(self.directory, "munge")
    os.makedirs(munge, mode=0o700)
    key = os.path.join(munge, "munge.key")
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True,
                   capture_output=True)
    os.chmod(key, 0o400)
    # --force: munged refuses to run as root, and this socket directory is
    # not its usual /run/munge.
    self._spawn("munged", [
        shutil.which("munged", path="/usr/sbin:/sbin:" + os.environ["PATH"]),
        "--foreground", "--force", f"--socket={self.socket}",
        f"--key-file={key}", f"--pid-file={munge}/munged.pid",
        f"--seed-file={munge}/munged.seed",
        f"--log-file={self._log('munged')}"])
    self._wait(lambda: os.path.exists(self.socket), "munged", 30)

  def _write_conf(self) -> None:
    state = os.path.join(self.directory, "state")
    spool = os.path.join(self.directory, "spool")
    for path in (state, spool, os.path.join(self.directory, "tmp")):
      os.makedirs(path, exist_ok=True)
    settings = [
        "ClusterName=pttest",
        f"SlurmctldHost={self.host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"FirstJobId={_first_job_id()}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge",
        f"AuthInfo=socket={self.socket},cred_expire={CRED_EXPIRE}",
        f"StateSaveLocation={state}",
        f"SlurmdSpoolDir={spool}",
        f"SlurmctldPidFile={self.directory}/slurmctld.pid",
        f"SlurmdPidFile={self.directory}/slurmd.pid",
        f"SlurmctldLogFile={self._log('slurmctld')}",
        f"SlurmdLogFile={self._log('slurmd')}",
        "SlurmctldDebug=info", "SlurmdDebug=info",
        f"TmpFS={self.directory}/tmp",
        f"PlugStackConfig={self.directory}/plugstack.conf",
        # No cgroups: they are neither needed nor available in containers.
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "MpiDefault=none",
        "SwitchType=switch/none",
        # A requeued job waits for the next scheduling pass (60 s apart
        # by default).
        "SchedulerType=sched/builtin", "SchedulerParameters=sched_interval=2",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2", "JobRequeue=1",
        f"KillWait={KILL_WAIT}",
        # Finished jobs stay visible to `scontrol show job` for an hour.
        "MinJobAge=3600",
        "InactiveLimit=0", "MessageTimeout=10", "SlurmdTimeout=60",
        "SlurmctldTimeout=60",
        f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} "
        f"RealMemory={NODE_MEMORY_MB} State=UNKNOWN",
        f"PartitionName=debug Nodes={self.host} Default=YES "
        "MaxTime=INFINITE State=UP",
    ]
    with open(self.conf, "w", encoding="utf-8") as f:
      f.write("# Written by tests/services/slurm.py: a private test cluster.\n")
      f.write("".join(s + "\n" for s in settings))
    with open(os.path.join(self.directory, "plugstack.conf"), "w") as f:
      f.write("# No SPANK plugins (pyxis) in the test cluster.\n")

  def start(self) -> "Cluster":
    """Starts munged, slurmctld and slurmd; returns once the node is idle."""
    self._check_installed()
    os.makedirs(os.path.join(self.directory, "log"), exist_ok=True)
    try:
      self._start_munge()
      self._write_conf()
      sbin = "/usr/sbin:/sbin:" + os.environ["PATH"]
      # -i: ignore state files (there are none); -D: foreground, so the
      # Popen here is the daemon and stop() can end it by its pid.
      self._spawn("slurmctld", [shutil.which("slurmctld", path=sbin), "-D",
                                "-i", "-f", self.conf])
      self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), "slurmctld",
                 60)
      self._spawn("slurmd", [shutil.which("slurmd", path=sbin), "-D", "-f",
                             self.conf, "-N", self.host])
      self._wait(self._node_idle, "slurmd", 90)
    except BaseException:
      self.stop()
      raise
    return self

  def _ok(self, argv: Sequence[str], expected: str) -> bool:
    result = subprocess.run(list(argv), env=self.env, capture_output=True,
                            text=True, timeout=30, check=False)
    return result.returncode == 0 and expected in result.stdout

  def _node_idle(self) -> bool:
    return self._ok(["sinfo", "--noheader", "--format=%t", "--nodes",
                     self.host], "idle")

  def _wait(self, ready, name: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while not ready():
      for daemon, process in self._processes.items():
        if process.poll() is not None:
          raise ClusterError(
              f"{daemon} exited with status {process.returncode} while "
              f"starting the test cluster in {self.directory}:\n"
              f"{_tail(self._log(daemon) + '.out')}\n"
              f"{_tail(self._log(daemon))}")
      if time.time() > deadline:
        raise ClusterError(
            f"{name} did not come up within {timeout:.0f}s in "
            f"{self.directory}:\n{_tail(self._log(name) + '.out')}\n"
            f"{_tail(self._log(name))}")
      time.sleep(0.5)

  def stop(self) -> None:
    """Cancels every job, ends the daemons this started and their children."""
    if "slurmctld" in self._processes and (
        self._processes["slurmctld"].poll() is None):
      subprocess.run(["scancel", "--full", "--user=root"], env=self.env,
                     capture_output=True, timeout=30, check=False)
    for name in reversed(_DAEMONS):
      process = self._processes.pop(name, None)
      if process is None:
        continue
      if process.poll() is None:
        process.terminate()
        try:
          process.wait(timeout=15)
        except subprocess.TimeoutExpired:
          process.kill()
          process.wait(timeout=15)
      # Job steps (slurmstepd and the tasks) live in the daemon's session.
      try:
        os.killpg(process.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    for process in _job_processes(self.conf):
      try:
        os.kill(process, signal.SIGKILL)
      except ProcessLookupError:
        pass

  # Jobs.

  def sbatch(self, args: Sequence[str], cwd: str,
             env: Optional[Dict[str, str]] = None) -> int:
    """`sbatch --parsable ARGS` from `cwd` with `env` (plus SLURM_CONF):
    the job id."""
    full = self.env
    full.update(env or {})
    full["SLURM_CONF"] = self.conf
    result = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd,
                            env=full, capture_output=True, text=True,
                            timeout=60, check=False)
    if result.returncode != 0:
      raise ClusterError(f"sbatch {' '.join(args)}: exit "
                         f"{result.returncode}\n{result.stderr}")
    return int(result.stdout.strip().split(";")[0])

  def scontrol(self, *args: str) -> str:
    result = subprocess.run(["scontrol", *args], env=self.env,
                            capture_output=True, text=True, timeout=60,
                            check=False)
    if result.returncode != 0:
      raise ClusterError(f"scontrol {' '.join(args)}: exit "
                         f"{result.returncode}\n{result.stderr}")
    return result.stdout

  def jobs(self, job: int) -> List[Dict[str, str]]:
    """`scontrol show job JOB` as one dict per record (an array job has one
    per task), e.g. {'JobState': 'RUNNING', 'Restarts': '1', ...}."""
    records = []
    for line in self.scontrol("--oneliner", "show", "job",
                              str(job)).splitlines():
      if line.strip():
        records.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return records

  def job(self, job: int) -> Dict[str, str]:
    (record,) = self.jobs(job)
    return record

  def wait(self, job: int, done, timeout: float = 300,
           what: str = "") -> List[Dict[str, str]]:
    """Polls the job's records until done(records) is true; raises
    ClusterError (with the records and slurmctld's log) after `timeout`."""
    deadline = time.time() + timeout
    while True:
      records = self.jobs(job)
      if done(records):
        return records
      if time.time() > deadline:
        states = [(r.get("JobId"), r.get("JobState"), r.get("Reason"),
                   r.get("Restarts")) for r in records]
        raise ClusterError(
            f"job {job}: not {what or 'done'} after {timeout:.0f}s: "
            f"{states}\nslurmctld log:\n{_tail(self._log('slurmctld'))}")
      time.sleep(1)

  def wait_for_state(self, job: int, states: Iterable[str],
                     timeout: float = 300) -> Dict[str, str]:
    """Waits until the (non-array) job is in one of `states`."""
    states = set(states)
    (record,) = self.wait(job, lambda r: r[0]["JobState"] in states, timeout,
                          f"in {sorted(states)}")
    return record

  def requeue(self, job: int) -> None:
    self.scontrol("requeue", str(job))

  def python_tasks(self, job: int) -> List[int]:
    """Pids of the job's Python processes (its train tasks, once worker.sh
    has exec-ed them)."""
    pids = []
    for pid, environ in _environments():
      if {f"SLURM_CONF={self.conf}", f"SLURM_JOB_ID={job}"} <= environ:
        try:
          exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
          continue
        if exe.startswith("python"):
          pids.append(pid)
    return pids


def _environments() -> Iterator[Tuple[int, Set[str]]]:
  """(pid, its environment's NAME=value entries) of every process but this
  one that can be read."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
      continue
    try:
      with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().decode(errors="replace")
    except OSError:
      continue
    yield int(pid), set(environ.split("\0"))


def _job_processes(conf: str) -> List[int]:
  """Pids of processes whose environment names this cluster's slurm.conf:
  slurmstepd and job tasks a daemon killed mid-job can leave behind (the
  daemons pass SLURM_CONF on, and sbatch exports the submitter's)."""
  return [pid for pid, environ in _environments()
          if f"SLURM_CONF={conf}" in environ]


def read_output(path: str) -> str:
  """A job's --output file ('' before the job wrote it)."""
  try:
    with open(path, errors="replace") as f:
      return f.read()
  except FileNotFoundError:
    return ""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
  """A started private SLURM cluster for one test module; stopped after it."""
  # A short path: munge's socket path must fit in a sockaddr_un (108 bytes).
  cluster = Cluster(tmp_path_factory.mktemp("slurm"))
  cluster.start()
  try:
    yield cluster
  finally:
    cluster.stop()
