"""Stopping a run on a signal with nothing lost: save, release, exit resumable.

TPU maintenance events and SLURM preemption or `scontrol requeue` send
SIGTERM, SLURM's `--signal` sends SIGUSR1 (or whatever it names) before the
time limit, and Ctrl-C sends SIGINT. A default handler kills the process and
loses every step since the last periodic checkpoint. Under `Watch` the
signal only sets a flag; the training loop asks `stop_requested()` after
each step, and all processes of a multi-process run agree (an all-gather of
the flags) on one step to stop at, so they save the same checkpoint
together. The loop then saves, raises `Preempted`, its context managers
release the run lock, and the entry point exits with `EXIT_PREEMPTED` (75,
EX_TEMPFAIL: "try again", what schedulers and launchers requeue on) or, for
Ctrl-C, 130 as shells expect. A resumed run continues from that checkpoint
bit for bit, as from any other.

A second SIGINT while the first is handled raises KeyboardInterrupt at once
(the user insists); checkpoints are written atomically, so even that loses
only the step in progress.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Dict, Iterator, Optional, Sequence

import numpy as np

# EX_TEMPFAIL (sysexits.h): a temporary failure, the command may be retried.
EXIT_PREEMPTED = 75
# What a shell reports for a process ended by Ctrl-C.
EXIT_INTERRUPTED = 130
# Signals that ask a run to save and stop. SIGUSR1 is SLURM's usual
# `--signal` choice for "time limit near".
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(Exception):
  """A run stopped on a signal after saving: resumable, not failed."""

  def __init__(self, signal_name: str, step: int, model_dir: str):
    super().__init__(
        f"stopped by {signal_name} at step {step}; the checkpoint of step "
        f"{step} is saved in {model_dir}: rerun the same command to resume "
        f"there")
    self.signal_name, self.step, self.model_dir = signal_name, step, model_dir

  @property
  def exit_code(self) -> int:
    return EXIT_INTERRUPTED if self.signal_name == "SIGINT" else (
        EXIT_PREEMPTED)


# Signal numbers in the order they arrived (handlers only append).
_received: list = []
# Non-empty while a `watch` is active: nested ones change nothing.
_watching: list = []


def _handler(signum: int, frame) -> None:  # pylint: disable=unused-argument
  if signum == signal.SIGINT and signal.SIGINT in _received:
    raise KeyboardInterrupt  # a second Ctrl-C: stop now
  if signum not in _received:
    logging.warning("Received %s: saving a checkpoint after this step, then "
                    "stopping (resumable).", signal.Signals(signum).name)
  _received.append(signum)


@contextlib.contextmanager
def watch(signals: Sequence[int] = SIGNALS) -> Iterator[None]:
  """Turns `signals` into a stop request for the duration of a run.

  Handlers can only be installed from the main thread; elsewhere (a run
  started from a worker thread) the signals keep their handlers and this
  does nothing, as does a `watch` inside another (the CLI watches from
  before JAX starts, `train` again for callers from Python). The previous
  handlers are restored on exit.
  """
  if threading.current_thread() is not threading.main_thread():
    yield  # handlers cannot be installed here
    return
  if _watching:
    # Already watched (the CLI's, outside): keep its state, but take the
    # signals back from whoever replaced the handlers meanwhile.
    reclaim(signals)
    yield
    return
  previous: Dict[int, object] = {}
  del _received[:]
  _watching.append(True)
  try:
    for signum in signals:
      previous[signum] = signal.signal(signum, _handler)
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    del _received[:]
    _watching.pop()


def reclaim(signals: Sequence[int] = SIGNALS) -> None:
  """Re-installs the handlers of an active `watch`.

  `jax.distributed.initialize()` installs JAX's own SIGTERM handler (its
  preemption notifier, which only records the signal), replacing ours; the
  CLI calls this right after it.
  """
  if _watching and threading.current_thread() is threading.main_thread():
    for signum in signals:
      signal.signal(signum, _handler)


def local_request() -> Optional[str]:
  """The first signal this process received under `watch`, or None."""
  return signal.Signals(_received[0]).name if _received else None


def stop_requested() -> Optional[str]:
  """The signal every process agrees to stop for now, or None.

  Multi-process: every process must call this at the same step (it is a
  collective: an all-gather of each process's first signal), so they all
  stop at the same step and save the same checkpoint together.
  """
  # pylint: disable=g-import-not-at-top
  # Imported here: the CLI imports this module before JAX may load.
  import jax
  from jax.experimental import multihost_utils
  # pylint: enable=g-import-not-at-top
  if jax.process_count() == 1:
    return local_request()
  mine = np.int32(_received[0] if _received else 0)
  everyone = np.asarray(multihost_utils.process_allgather(mine))
  first = next((int(s) for s in everyone.reshape(-1) if s), 0)
  return signal.Signals(first).name if first else None


def wait_for_every_process() -> None:
  """Returns once every process has stopped (after its lock and files).

  Launchers end a whole job when one process exits non-zero (SLURM's
  `srun --kill-on-bad-exit`), so no process may exit with EXIT_PREEMPTED
  while another is still saving or releasing the run lock.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("prompt_tuning_preempted")
