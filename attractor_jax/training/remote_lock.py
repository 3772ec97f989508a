"""One trainer per workdir on object storage (`gs://...`): a renewed lease.

Object stores have no `flock`, and a lock object outlives a killed trainer.
So the lock is a lease: `workdir/.lock` holds the holder's name, a random
token and when it last renewed; a thread renews it every quarter lease.

- A lease renewed within the last `lease_s` seconds is live. A new trainer
  watches it for up to one more lease: if the holder renews it meanwhile, the
  new trainer is refused; if not (its trainer was killed), it takes over. So a
  trainer restarted after a SIGKILL waits at most one lease instead of failing.
- Two trainers that write the lock at the same moment both read it back
  after `settle_s`; only the one whose token is there goes on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable, Optional

from etils import epath

logger = logging.getLogger("attractor_jax")

LEASE_S = 60.0
SETTLE_S = 2.0


class RemoteLease:
  """Holds the lease on `path` (an epath-readable lock object) once acquired.

  Args:
    path: the lock object, e.g. gs://bucket/run/.lock.
    holder: who holds it, for other trainers' error messages.
    locked_error: the exception class raised when a live trainer holds it.
    lease_s: how long an unrenewed lease stays live (None: `LEASE_S`).
    settle_s: wait between writing the lock and reading it back (None:
      `SETTLE_S`).
  """

  def __init__(self, path: str, holder: str,
               locked_error: Callable[[str], Exception], *,
               lease_s: Optional[float] = None,
               settle_s: Optional[float] = None):
    self.path = epath.Path(path)
    self.holder = holder
    self.locked_error = locked_error
    self.lease_s = LEASE_S if lease_s is None else lease_s
    self.settle_s = SETTLE_S if settle_s is None else settle_s
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._renewer: Optional[threading.Thread] = None

  def _read(self) -> Optional[dict]:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}                 # unreadable: treated as a stale lease

  def _write(self) -> None:
    self.path.write_text(json.dumps({
        "holder": self.holder, "token": self.token, "renewed": time.time(),
        "lease_s": self.lease_s}))

  def _live(self, lock: Optional[dict]) -> bool:
    return bool(lock) and time.time() - lock.get("renewed", 0) < lock.get(
        "lease_s", self.lease_s)

  def _wait_for_expiry(self, lock: dict) -> None:
    """Returns once `lock` has gone stale; raises if its holder renews it."""
    print(f"{self.path} is held by {lock.get('holder', 'another trainer')}; "
          f"waiting up to {lock.get('lease_s', self.lease_s):.0f} s for it to "
          "lapse (a trainer that was killed stops renewing it).", flush=True)
    while True:
      time.sleep(min(self.lease_s, lock.get("lease_s", self.lease_s)) / 4)
      now = self._read()
      if not self._live(now):
        return
      if now.get("renewed") != lock.get("renewed"):
        raise self.locked_error(
            f"Another trainer ({now.get('holder', 'unknown')}) is running in "
            f"{self.path.parent}; wait for it to finish or use another "
            "--workdir.")

  def acquire(self) -> "RemoteLease":
    while True:
      lock = self._read()
      if self._live(lock):
        self._wait_for_expiry(lock)
      self._write()
      time.sleep(self.settle_s)
      if (self._read() or {}).get("token") == self.token:
        break
    self._renewer = threading.Thread(target=self._renew, daemon=True,
                                     name="workdir-lease")
    self._renewer.start()
    return self

  def _renew(self) -> None:
    while not self._stop.wait(self.lease_s / 4):
      lock = self._read()
      if lock is not None and lock.get("token") not in (self.token, None):
        logger.error("Lost the workdir lease %s to %s.", self.path,
                     lock.get("holder"))
        return
      try:
        self._write()
      except OSError as e:        # a transient storage error: retry next time
        logger.warning("Could not renew the workdir lease %s: %s", self.path,
                       e)

  def release(self) -> None:
    self._stop.set()
    if self._renewer is not None:
      self._renewer.join()
      self._renewer = None
    if (self._read() or {}).get("token") == self.token:
      try:
        self.path.unlink()
      except OSError as e:      # it lapses on its own within one lease
        logger.warning("Could not remove the workdir lease %s: %s",
                       self.path, e)


def holder_name() -> str:
  return (f"pid {os.getpid()} on {socket.gethostname()} since "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
