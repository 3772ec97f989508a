"""Workdirs written before the tasks became packages (commit 8604c03, kept
in tests/fixtures/) still load, evaluate and resume with today's code."""

import pathlib
import shutil

import numpy as np
import pytest

from attractor_jax.tasks.puzzles import data as puzzle_data
from attractor_jax.tasks.puzzles import evaluation as puzzle_eval
from attractor_jax.training import metrics
from attractor_jax.training import tasks
from attractor_jax.training import trainer
from attractor_jax.training import workdir as workdir_lib

# The heavy tier (.ci/run): restores, evaluates and resumes saved runs.
pytestmark = pytest.mark.heavy

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
SAVED = FIXTURES / "workdirs_8604c03"


def copy_of(name, tmp_path):
  workdir = tmp_path / name
  shutil.copytree(SAVED / name, workdir)
  return str(workdir)


def test_a_saved_lm_workdir_evaluates_and_resumes(tmp_path, capsys):
  workdir = copy_of("lm_workdir", tmp_path)
  trained, tokenizer, config = trainer.load_trained(workdir)
  assert trained.step == 2 and tokenizer.vocab_size == 384
  task = tasks.get_task(config)
  results = task.evaluate_workdir(config, workdir, trained, tokenizer,
                                  eval_batches=1)
  assert np.isfinite(results["validation"]["loss"])
  assert "validation loss" in capsys.readouterr().out

  config = workdir_lib.load_config(workdir)
  config.total_steps = 3
  summary = trainer.train_and_evaluate(config, workdir)
  assert summary["start_step"] == 2 and summary["step"] == 3
  steps = [row["step"] for row in metrics.read_jsonl(
      pathlib.Path(workdir) / "metrics.jsonl") if "loss" in row]
  assert steps[0] == 2 and steps[-1] == 3     # the old history is kept


def test_a_saved_puzzle_workdir_loads_and_evaluates(tmp_path):
  workdir = copy_of("puzzle_workdir", tmp_path)
  trained, _, config = trainer.load_trained(workdir)
  assert trained.step == 2 and config.task == "puzzle"
  assert "test_examples" not in config            # saved before the field
  test = puzzle_data.load("sudoku", "test").spread(8)
  result = puzzle_eval.evaluate(trained.model, test, batch_size=8)
  assert result["count"] == 8
  assert 0.0 <= result["blank_cell_accuracy"] <= 1.0
