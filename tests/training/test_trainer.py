"""The training loop: bitwise resume, and clear errors for bad configs."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from attractor_jax.tasks.lm import checks as lm_checks
from attractor_jax.tasks.lm import data as lm_data
from attractor_jax.training import checkpoints
from attractor_jax.training import metrics
from attractor_jax.training import trainer
from attractor_jax.training import workdir as workdir_lib
from tiny_configs import lm_config as tiny_config


def final_checkpoint(workdir):
  with checkpoints.Checkpointer(workdir) as ckpt:
    return ckpt.restore()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """A workdir trained for 6 steps in one go, and its summary."""
  workdir = tmp_path_factory.mktemp("straight")
  return workdir, trainer.train_and_evaluate(tiny_config(), str(workdir))


@pytest.mark.heavy
def test_resumed_run_is_bitwise_equal_to_a_straight_run(straight_run,
                                                          tmp_path):
  config = tiny_config()
  straight, summary = straight_run
  assert summary["step"] == 6 and np.isfinite(summary["train"]["loss"])
  logged = metrics.read_jsonl(straight / "metrics.jsonl")
  train_rows = [row for row in logged if "loss" in row]
  assert [row["step"] for row in train_rows] == [2, 4, 6]
  assert any("val/loss" in row for row in logged)
  for key in ("loss", "perplexity", "lr", "grad_norm", "skipped_updates",
              "tokens_per_s", "solver/iterations_mean",
              "solver/converged_fraction", "head_contribution",
              "gates/attn_mean", "gates/mlp_mean"):
    assert key in train_rows[-1], key
  assert train_rows[-1]["tokens_per_s"] > 0
  resumed = tmp_path / "resumed"
  first = trainer.train_and_evaluate(config, str(resumed), stop_at_step=3)
  assert first["step"] == 3
  second = trainer.train_and_evaluate(config, str(resumed))
  assert second["start_step"] == 3 and second["step"] == 6
  state_a, data_a, _, _ = final_checkpoint(straight)
  state_b, data_b, _, _ = final_checkpoint(resumed)
  assert data_a == data_b and data_a            # same data position
  leaves_a = jax.tree_util.tree_leaves_with_path(state_a)
  leaves_b = jax.tree_util.tree_leaves_with_path(state_b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, a), (_, b) in zip(leaves_a, leaves_b):
    assert a.dtype == b.dtype, path
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  # Training moved the parameters: the check above is not trivially true.
  assert int(state_a["optimizer"]["step"]) == 6


def test_a_workdir_of_another_model_shape_is_refused(straight_run):
  config = tiny_config()
  config.model.dim = 48
  with pytest.raises(checkpoints.ConfigMismatchError, match="dim"):
    trainer.train_and_evaluate(config, str(straight_run[0]))


@pytest.mark.slow
def test_evaluate_and_generate_commands_read_the_workdir(straight_run):
  workdir = str(straight_run[0])
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", *args, f"--workdir={workdir}"],
      capture_output=True, text=True, timeout=600, check=True).stdout
  out = run("attractor_jax.evaluate")
  assert "validation loss" in out and "perplexity" in out
  assert os.path.exists(os.path.join(workdir, "eval", "depth_sweep.png"))
  out = run("attractor_jax.generate", "--prompt=ROMEO:", "--num_tokens=8",
            "--temperature=0")
  assert out.startswith("ROMEO:") and len(out.strip()) > len("ROMEO:")


@pytest.mark.heavy
def test_evaluate_scores_last_words_for_a_config_saved_before_them(
    straight_run, tmp_path):
  workdir = tmp_path / "old"
  shutil.copytree(straight_run[0], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  del saved["last_word_examples"]          # the field is newer than the run
  (workdir / "config.json").write_text(json.dumps(saved))
  out = subprocess.run(
      [sys.executable, "-m", "attractor_jax.evaluate", f"--workdir={workdir}"],
      capture_output=True, text=True, timeout=600, check=True).stdout
  assert "Held-out last words" in out
  scored = json.loads((workdir / "eval" / "last_word.json").read_text())
  assert scored["words"] > 0


def test_bad_configs_give_clear_errors(tmp_path):
  config = tiny_config()
  config.model.preset = "attractor-14m"
  with pytest.raises(ValueError, match="attractor-140m"):
    lm_checks.model_config_from(config)
  config = tiny_config()
  config.data.source = "text"
  config.data.path = str(tmp_path / "no-such-corpus")
  with pytest.raises(FileNotFoundError, match="no-such-corpus"):
    lm_data.prepare_data(config, str(tmp_path))
  config.data.source = "parquet"
  with pytest.raises(ValueError, match="Unknown data source"):
    lm_data.load_documents(config.data)
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    workdir_lib.load_config(str(tmp_path / "empty"))
