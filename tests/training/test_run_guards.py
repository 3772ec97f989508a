"""Faults injected into real training runs: divergence, NaN in the map and
in the data, SIGTERM, a second trainer, steps redone after a crash."""

import glob
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attractor_jax.training import checkpoints
from attractor_jax.training import metrics
from attractor_jax.training import run_guards
from attractor_jax.training import tasks
from attractor_jax.training import trainer
from attractor_jax.training import workdir as workdir_lib
from tiny_configs import lm_config as tiny_config

# The heavy tier (.ci/run): each test trains, and several kill or restart a run.
pytestmark = pytest.mark.heavy


def guarded_config(total_steps=8):
  config = tiny_config(total_steps)
  config.log_every = 1
  config.checkpoint_every = 1
  config.keep_checkpoints = 2
  config.divergence.max_consecutive_bad_steps = 3
  return config


def train_rows(workdir):
  return [r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in r]


def test_an_exploding_learning_rate_stops_and_keeps_the_good_checkpoint(
    tmp_path):
  config = guarded_config(20)
  config.optimizer.lr = 1e3            # the user's run: loss climbs to 1e7
  config.optimizer.warmup_steps = 1
  workdir = str(tmp_path)
  with pytest.raises(run_guards.TrainingDivergedError) as info:
    trainer.train_and_evaluate(config, workdir)
  rows = train_rows(workdir)
  first_bad = next(r["step"] for r in rows if r["bad_steps_in_a_row"] == 1)
  message = str(info.value)
  assert f"diverged at step {first_bad + 2}: 3 bad steps" in message
  assert "the loss is past its limit" in message
  # The parameters saved after step first_bad - 1 produced the first bad
  # loss: that checkpoint is moved aside; the one before it is kept.
  good = first_bad - 2
  with checkpoints.Checkpointer(workdir) as ckpt:
    assert ckpt.all_steps() == ([good] if good else [])
  if good:
    assert f"last good checkpoint is step {good}" in message
  assert os.listdir(tmp_path / checkpoints.SET_ASIDE_DIR) and "moved" in message
  assert rows[-1]["skipped_updates"] == 3
  assert all(r["loss"] < 3 * np.log(512) for r in rows if r["step"] <= good)


def test_nan_in_the_data_is_skipped_and_counted(tmp_path, monkeypatch):
  shard_batch = trainer.parallel.shard_batch
  calls = []

  def poisoned(batch, mesh):
    calls.append(1)
    if len(calls) in (3, 4):         # token ids past the vocabulary: NaN
      batch = dict(batch, inputs=np.full_like(batch["inputs"], 10**6))
    return shard_batch(batch, mesh)

  monkeypatch.setattr(trainer.parallel, "shard_batch", poisoned)
  summary = trainer.train_and_evaluate(guarded_config(6), str(tmp_path))
  rows = train_rows(str(tmp_path))
  assert summary["step"] == 6 and np.isfinite(summary["train"]["loss"])
  assert [r["bad_steps_in_a_row"] for r in rows] == [0, 0, 1, 2, 0, 0]
  assert rows[2]["health/loss_nonfinite"] == 1.0
  assert rows[-1]["skipped_updates"] == 2
  # Skipped steps leave no checkpoint; the others are all there.
  assert not os.path.exists(tmp_path / "checkpoints" / "3")


def test_nan_in_the_map_stops_the_run_and_names_the_forward_solve(
    tmp_path, monkeypatch):
  create = trainer.create_train_state

  def poisoned(*args, **kwargs):
    state = create(*args, **kwargs)
    gate = state.model.head.blocks[0].mlp_gate.raw
    gate[...] = gate[...].at[0].set(jnp.nan)
    return state

  monkeypatch.setattr(trainer, "create_train_state", poisoned)
  with pytest.raises(run_guards.TrainingDivergedError,
                     match="diverged at step 3.*forward solve"):
    trainer.train_and_evaluate(guarded_config(6), str(tmp_path))
  assert train_rows(str(tmp_path))[0]["health/forward_solve_failed"] == 1.0


def test_a_second_trainer_is_refused_and_a_dead_holder_frees_the_lock(
    tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\n"
       "from attractor_jax.training import run_guards\n"
       "lock = run_guards.WorkdirLock(sys.argv[1]).acquire()\n"
       "print('locked', flush=True)\n"
       "time.sleep(600)\n", str(tmp_path)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(run_guards.WorkdirLockedError,
                       match=f"pid {holder.pid} on .* is running in"):
      trainer.train_and_evaluate(guarded_config(2), str(tmp_path))
    assert os.listdir(tmp_path) == [run_guards.LOCK_NAME]   # nothing written
  finally:
    holder.kill()
    holder.wait()
  with run_guards.WorkdirLock(str(tmp_path)):   # the kernel dropped it
    pass
  assert not os.path.exists(tmp_path / run_guards.LOCK_NAME)


def test_a_refused_resume_leaves_the_config_and_metrics_alone(tmp_path):
  config = guarded_config(4)
  config.log_every = 2
  workdir = str(tmp_path)
  trainer.train_and_evaluate(config, workdir, stop_at_step=4)
  saved = (tmp_path / workdir_lib.CONFIG_NAME).read_text()
  other = guarded_config(6)
  other.model.dim = 48
  with pytest.raises(checkpoints.ConfigMismatchError):
    trainer.train_and_evaluate(other, workdir)
  assert (tmp_path / workdir_lib.CONFIG_NAME).read_text() == saved


def test_steps_redone_after_a_crash_are_logged_once(tmp_path):
  config = guarded_config(6)
  config.checkpoint_every = 2
  workdir = str(tmp_path)
  trainer.train_and_evaluate(config, workdir, stop_at_step=4)
  # A crash after steps 5 and 6 were logged but before they were saved.
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"st')
  trainer.train_and_evaluate(config, workdir)
  steps = [r["step"] for r in train_rows(workdir)]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_two_runs_of_one_config_give_the_same_losses(tmp_path):
  config = guarded_config(5)
  config.checkpoint_every = 100
  losses = []
  for name in ("a", "b"):
    trainer.train_and_evaluate(config, str(tmp_path / name))
    losses.append([(r["step"], r["loss"], r["grad_norm"])
                   for r in train_rows(str(tmp_path / name))])
  assert len(losses[0]) == 5 and losses[0] == losses[1]


_TRAIN = """
import os
import sys
sys.path.insert(0, sys.argv[2])
sys.path.insert(0, os.path.dirname(sys.argv[2]))
from test_run_guards import guarded_config
from attractor_jax.training import run_guards, trainer
config = guarded_config(int(sys.argv[3]))
config.checkpoint_every = 100
summary = trainer.train_and_evaluate(config, sys.argv[1])
sys.exit(run_guards.PREEMPTED_EXIT_CODE if summary["preempted"] else 0)
"""


def test_sigterm_saves_and_the_resumed_run_is_bitwise_equal(tmp_path):
  total = 12
  here = os.path.dirname(__file__)
  preempted = str(tmp_path / "preempted")
  process = subprocess.Popen(
      [sys.executable, "-c", _TRAIN, preempted, here, str(total)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  jsonl = os.path.join(preempted, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(jsonl) and len(train_rows(preempted)) >= 3:
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=300)
  assert process.returncode == run_guards.PREEMPTED_EXIT_CODE, err[-2000:]
  with checkpoints.Checkpointer(preempted) as ckpt:
    stopped_at = ckpt.latest_step()
  assert 3 <= stopped_at < total            # saved off the interval (100)
  assert f"Preempted at step {stopped_at}" in out
  resumed = trainer.train_and_evaluate(guarded_config_no_interval(total),
                                       preempted)
  assert resumed["start_step"] == stopped_at
  straight = str(tmp_path / "straight")
  trainer.train_and_evaluate(guarded_config_no_interval(total), straight)
  for run in (preempted, straight):
    assert [r["step"] for r in train_rows(run)] == list(range(1, total + 1))
  with checkpoints.Checkpointer(preempted) as a, \
      checkpoints.Checkpointer(straight) as b:
    state_a, data_a, _, _ = a.restore()
    state_b, data_b, _, _ = b.restore()
  assert data_a == data_b
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def guarded_config_no_interval(total_steps):
  config = guarded_config(total_steps)
  config.checkpoint_every = 100
  return config


def test_evaluation_falls_back_past_a_truncated_checkpoint(tmp_path):
  config = guarded_config(4)
  config.checkpoint_every = 2
  config.keep_checkpoints = 3
  workdir = str(tmp_path)
  trainer.train_and_evaluate(config, workdir)
  for name in glob.glob(str(tmp_path / "checkpoints" / "4" / "state" / "**"
                            / "d" / "*"), recursive=True):
    if os.path.isfile(name):
      with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) // 2)
  trained, _, _ = trainer.load_trained(workdir)
  assert trained.step == 2
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]  # as is
  with pytest.raises(checkpoints.CheckpointError, match="step 4"):
    trainer.load_trained(workdir, step=4)
  # The trainer moves it aside and resumes from step 2.
  summary = trainer.train_and_evaluate(config, workdir)
  assert summary["start_step"] == 2 and summary["step"] == 4
  assert os.listdir(tmp_path / checkpoints.SET_ASIDE_DIR)[0].startswith(
      "4-unreadable-")


def test_a_resume_may_change_what_leaves_the_parameters_alone(tmp_path):
  workdir_lib.save_config(guarded_config(2), str(tmp_path))
  config = guarded_config(2)
  config.solve.tol = 1e-2                   # same parameters: accepted
  config.divergence.max_consecutive_bad_steps = 0
  tasks.validate_config(config, str(tmp_path))
  config.model.num_layers = 2               # more arrays: refused
  with pytest.raises(checkpoints.ConfigMismatchError,
                     match="num_layers: saved 1, current 2"):
    tasks.validate_config(config, str(tmp_path))
  config = guarded_config(2)
  config.divergence.max_loss_factor = -1.0
  with pytest.raises(ValueError, match="divergence.max_loss_factor"):
    tasks.validate_config(config)
