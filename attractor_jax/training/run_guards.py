"""What keeps a training run safe: one trainer per workdir, preemption, and
divergence.

- `WorkdirLock`: an exclusive `flock` on `workdir/.lock`, refused with the
  holder's pid and host when another trainer has it. The kernel drops the lock
  when its process dies, however it dies, so a crash never leaves a stale lock.
  On object storage (`gs://...`) it is a renewed lease instead
  (`remote_lock.RemoteLease`).
- `PreemptionWatcher`: SIGTERM (what TPU VM and most schedulers send before
  killing a job) only sets a flag; the loop finishes its step, saves, waits
  until the save is durable and exits with `PREEMPTED_EXIT_CODE`. With more
  than one process, orbax's preemption sync point decides instead, so that
  every host saves the same step.
- `step_health`: per-step flags for what went wrong (non-finite loss or
  gradients, a forward solve that produced NaN or ran away, a loss past its
  bound); the trainer skips such a step and stops after a run of them.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import threading
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from attractor_jax import errors
from attractor_jax.training import remote_lock

# EX_TEMPFAIL of sysexits.h: "try again later", which is what a preempted run
# asks of its scheduler. Documented in the README.
PREEMPTED_EXIT_CODE = 75
LOCK_NAME = ".lock"


class TrainingDivergedError(errors.UserError, RuntimeError):
  """Too many bad steps in a row: the run stopped; its checkpoints are good."""

  exit_code = 3


class WorkdirLockedError(errors.UserError):
  """Another live trainer holds the workdir."""


class WorkdirLock:
  """Holds `workdir/.lock` for the life of a trainer (a context manager).

  A local workdir is locked with `flock`; one on object storage (`gs://...`)
  with a lease that a thread renews (`remote_lock.RemoteLease`: a trainer
  restarted after being killed waits at most one lease, 60 s, for the old
  one to lapse). Several processes: process 0 holds it.
  On release, a workdir that this lock created and that is still empty is
  removed again, so a run refused before writing anything leaves no trace.
  """

  def __init__(self, workdir: str):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._file = None
    self._lease = None
    self._created_workdir = False

  def acquire(self) -> "WorkdirLock":
    # In a run over several processes the workdir is shared: process 0 holds
    # the lock for all of them.
    if jax.process_index() != 0:
      return self
    if "://" in self.workdir:
      self._lease = remote_lock.RemoteLease(
          self.path, remote_lock.holder_name(), WorkdirLockedError).acquire()
      return self
    self._created_workdir = not os.path.exists(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    handle = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "unknown process"
      handle.close()
      raise WorkdirLockedError(
          f"Another trainer ({holder}) is running in {self.workdir}; wait "
          "for it to finish or use another --workdir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(remote_lock.holder_name() + "\n")
    handle.flush()
    self._file = handle
    return self

  def release(self) -> None:
    if self._lease is not None:
      self._lease.release()
      self._lease = None
    if self._file is None:
      return
    os.remove(self.path)
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None
    if self._created_workdir and not os.listdir(self.workdir):
      os.rmdir(self.workdir)

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


class PreemptionWatcher:
  """Tells the loop when to save and stop for a preemption.

  Single process: installs a SIGTERM handler (main thread only) that sets a
  flag; the previous handler is put back by `close`. Several processes: asks
  orbax's `reached_preemption`, a sync point every host reaches at the same
  step.
  """

  def __init__(self, checkpointer):
    self._checkpointer = checkpointer
    self._signalled = threading.Event()
    self._previous = None
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    del signum, frame
    self._signalled.set()

  def should_stop(self, step: int) -> bool:
    """True once a preemption notice has arrived (all hosts agree)."""
    if jax.process_count() > 1:
      return self._checkpointer.reached_preemption(step)
    return self._signalled.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


# Keys of `step_health`, and how the stop message names each.
HEALTH_CHECKS = {
    "loss_nonfinite": "the loss is NaN or infinite",
    "loss_over_limit": "the loss is past its limit",
    "grads_nonfinite": "the gradients (backward pass or backward solve) are "
                       "NaN or infinite",
    "forward_solve_failed": "the forward solve produced NaN or diverged",
}


def loss_limit(config, vocab_size: int) -> float:
  """The loss past which a step counts as bad: a multiple of ln(vocab),
  the loss of a uniform prediction (inf if the factor is 0)."""
  factor = config.divergence.max_loss_factor
  return factor * math.log(vocab_size) if factor > 0 else math.inf


def step_health(loss: jax.Array, grads: Any, stats, limit) -> dict:
  """bool scalars, one per `HEALTH_CHECKS` key; all False for a good step."""
  failed = jnp.zeros((), bool)
  if stats is not None:
    failed = jnp.any(stats.nonfinite)
    diverged = getattr(stats, "diverged", None)
    if diverged is not None:
      failed |= jnp.any(diverged)
  return {
      "loss_nonfinite": ~jnp.isfinite(loss),
      "loss_over_limit": loss > limit,
      "grads_nonfinite": ~jnp.isfinite(optax.tree.norm(grads)),
      "forward_solve_failed": failed,
  }


def describe_bad_step(flags: dict) -> str:
  """"the loss is ...; the gradients ..." for the flags that are set."""
  reasons = [text for key, text in HEALTH_CHECKS.items() if flags.get(key)]
  return "; ".join(reasons) or "unknown"


def diverged_message(step: int, streak: int, reasons: str, limit: float,
                     last_good: Optional[int], checkpoint_dir,
                     set_aside=()) -> str:
  """The one-paragraph report of a run stopped for divergence."""
  where = (f"the last good checkpoint is step {last_good} in "
           f"{checkpoint_dir}" if last_good is not None
           else "no good checkpoint was saved before it")
  if set_aside:
    where += ("; checkpoints saved just before the bad steps were moved to "
              + ", ".join(str(p) for p in set_aside))
  return (f"Training diverged at step {step}: {streak} bad steps in a row "
          f"were skipped (last one: {reasons}; loss limit {limit:.4g}). "
          f"Stopped; {where}. Lower optimizer.lr or raise "
          "divergence.max_consecutive_bad_steps, then run again to resume.")
