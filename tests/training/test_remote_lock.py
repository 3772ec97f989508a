"""The workdir lease on object storage: refused while renewed, taken over
once it lapses, removed on release (run here on a local path; epath reads
both alike)."""

import json
import time

import pytest

from attractor_jax.training import remote_lock


class Locked(Exception):
  pass


def lease(path, name, lease_s=2.0):
  return remote_lock.RemoteLease(str(path), name, Locked, lease_s=lease_s,
                                 settle_s=0.05)


def test_a_lease_is_written_renewed_and_removed_on_release(tmp_path):
  path = tmp_path / ".lock"
  first = lease(path, "first").acquire()
  written = json.loads(path.read_text())
  assert (written["holder"], written["token"]) == ("first", first.token)
  time.sleep(0.8)                     # past a quarter lease: renewed since
  assert json.loads(path.read_text())["renewed"] > written["renewed"]
  first.release()
  assert not path.exists()


def test_a_second_trainer_is_refused_while_the_lease_is_renewed(tmp_path):
  path = tmp_path / ".lock"
  first = lease(path, "first trainer").acquire()
  try:
    start = time.time()
    with pytest.raises(Locked, match="first trainer"):
      lease(path, "second").acquire()
    assert time.time() - start < 2.0     # refused at the first renewal seen
    assert json.loads(path.read_text())["token"] == first.token
  finally:
    first.release()


def test_a_lease_nobody_renews_is_taken_over_after_it_lapses(tmp_path):
  path = tmp_path / ".lock"
  path.write_text(json.dumps({"holder": "a killed trainer", "token": "old",
                              "renewed": time.time(), "lease_s": 0.4}))
  start = time.time()
  second = lease(path, "second", lease_s=0.4).acquire()
  try:
    assert time.time() - start >= 0.4
    assert json.loads(path.read_text())["token"] == second.token
  finally:
    second.release()


def test_an_unreadable_lock_counts_as_lapsed(tmp_path):
  path = tmp_path / ".lock"
  path.write_text("{not json")
  taken = lease(path, "second").acquire()
  assert json.loads(path.read_text())["token"] == taken.token
  taken.release()
