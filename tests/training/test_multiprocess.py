"""A real run over two processes on one CPU machine (gloo collectives).

`python -m attractor_jax.train` twice, with --coordinator_address=127.0.0.1,
--num_processes=2 and --process_id=0/1 (one CPU device each), against one
process with two devices and the same global batch (the two processes
build the multi-slice mesh, `mesh.dcn_data=2`): the losses must agree step
by step, each process must have read only its half of every batch, and
the checkpoints must restore in a single process. The evaluations after
training (LM last words, the puzzle test set) split their batches too.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from attractor_jax.training import metrics

# The heavy tier (.ci/run): several processes and the trainer's commands.
pytestmark = pytest.mark.heavy

# The tiny model of tiny_configs.lm_config, as command-line overrides.
_OVERRIDES = {
    "model.dim": 32, "model.mlp_dim": 64, "model.num_heads": 2,
    "model.num_layers": 1, "solve.max_iter": 6, "data.vocab_size": 512,
    "data.seq_len": 32, "batch_size": 4, "eval_batches": 1,
    "total_steps": 4, "log_every": 1, "eval_every": 4,
    "checkpoint_every": 2, "depth_sweep": False, "sample.num_tokens": 8,
}
_STEPS = _OVERRIDES["total_steps"]
_TIMEOUT_S = 300


def _command(workdir, *extra):
  return ([sys.executable, "-m", "attractor_jax.train", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in _OVERRIDES.items()] + list(extra))


def _environment(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train = {row["step"]: row["loss"] for row in rows if "loss" in row}
  val = [row["val/loss"] for row in rows if "val/loss" in row]
  return [train[step] for step in range(1, _STEPS + 1)], val


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(one process with 2 devices, two processes with 1 device each)."""
  single = tmp_path_factory.mktemp("single")
  result = subprocess.run(_command(single), env=_environment(2),
                          capture_output=True, text=True, timeout=_TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]

  shared = tmp_path_factory.mktemp("two_processes")
  address = f"127.0.0.1:{_free_port()}"
  workers = [subprocess.Popen(
      _command(shared, f"--coordinator_address={address}",
               "--num_processes=2", f"--process_id={i}",
               # One replica per process, the gradient all-reduce between
               # them: the multi-slice (ICI x DCN) mesh.
               "--config.mesh.dcn_data=2"),
      env=_environment(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = []
  try:
    for worker in workers:
      outputs.append(worker.communicate(timeout=_TIMEOUT_S))
  finally:
    for worker in workers:
      worker.kill()
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
  return single, shared, [out for out, _ in outputs]


def test_two_processes_give_the_losses_of_one(runs):
  single, shared, _ = runs
  one_losses, one_val = _losses(single)
  two_losses, two_val = _losses(shared)
  assert np.all(np.isfinite(one_losses))
  # Same rows in the same order and the same two-way all-reduce: bit for bit.
  np.testing.assert_array_equal(two_losses, one_losses)
  np.testing.assert_array_equal(two_val, one_val)
  assert len(set(np.round(one_losses, 4))) > 1      # it trained


def test_only_process_zero_writes_and_both_print_the_same_sample(runs,
                                                                 tmp_path):
  single, shared, stdouts = runs
  assert os.path.exists(os.path.join(shared, "config.json"))
  assert not os.path.exists(os.path.join(shared, ".lock"))   # released
  with open(os.path.join(shared, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["batch_size"] == 4        # the global batch
  samples = [out.split("Sample:")[-1].strip() for out in stdouts]
  assert samples[0] and samples[0] == samples[1]
  # Last-word accuracy over global batches assembled from both processes.
  words = [out.split("Held-out last words (")[1].split("\n")[0]
           for out in stdouts]
  assert words[0] == words[1] and "over 0 words" not in words[0]
  with open(os.path.join(shared, "eval", "last_word.json"),
            encoding="utf-8") as f:
    assert json.load(f)["words"] > 0
  with open(os.path.join(shared, "sample.txt"), encoding="utf-8") as f:
    assert f.read().strip() == samples[0]
  steps = sorted(int(d) for d in os.listdir(os.path.join(shared, "checkpoints"))
                 if d.isdigit())
  assert steps[-1] == _STEPS


def test_a_two_process_checkpoint_evaluates_in_one_process(runs):
  single, shared, _ = runs
  outputs = []
  for workdir in (single, shared):
    result = subprocess.run(
        [sys.executable, "-m", "attractor_jax.evaluate",
         f"--workdir={workdir}"], env=_environment(1), capture_output=True,
        text=True, timeout=_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    loss = result.stdout.split("validation loss ")[1].split(",")[0]
    outputs.append(float(loss))
  np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4)



_PUZZLE = ["--config=attractor_jax/configs/sudoku.py:transformer-tiny",
           "--config.total_steps=2", "--config.batch_size=4",
           "--config.eval_every=2", "--config.eval_examples=8",
           "--config.eval_batch_size=250", "--config.checkpoint_every=2"]


def test_two_processes_evaluate_the_puzzle_test_set_as_one(tmp_path):
  """Training shards, and so does the whole-test-set evaluation: each
  process solves half of every batch, and both see all the results."""
  single = tmp_path / "single"
  result = subprocess.run(
      [sys.executable, "-m", "attractor_jax.train", f"--workdir={single}"]
      + _PUZZLE, env=_environment(2), capture_output=True, text=True,
      timeout=_TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]
  shared = tmp_path / "two"
  address = f"127.0.0.1:{_free_port()}"
  workers = [subprocess.Popen(
      [sys.executable, "-m", "attractor_jax.train", f"--workdir={shared}",
       f"--coordinator_address={address}", "--num_processes=2",
       f"--process_id={i}"] + _PUZZLE + ["--config.mesh.dcn_data=2"],
      env=_environment(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  try:
    outputs = [worker.communicate(timeout=_TIMEOUT_S) for worker in workers]
  finally:
    for worker in workers:
      worker.kill()
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
  results = []
  for workdir in (single, shared):
    with open(workdir / "eval" / "puzzle_eval.json", encoding="utf-8") as f:
      results.append(json.load(f))
  assert results[1]["count"] == results[0]["count"] == 5000
  for key in ("exact_accuracy", "cell_accuracy", "blank_cell_accuracy"):
    assert results[1][key] == pytest.approx(results[0][key], abs=1e-6), key
  tables = [out.split("sudoku test set")[1].split("\nwrote")[0].strip()
            for out, _ in outputs]
  assert tables[0] == tables[1]          # both processes saw every result
