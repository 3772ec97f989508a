"""Puzzle runs through the standard entry points: train, resume, evaluate."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax import errors
from attractor_jax.configs import maze as maze_configs
from attractor_jax.configs import sudoku as sudoku_configs
from attractor_jax.models import reasoning
from attractor_jax.tasks.puzzles import data as puzzle_data
from attractor_jax.tasks.puzzles import evaluation as puzzle_eval
from attractor_jax.training import checkpoints
from attractor_jax.training import tasks
from attractor_jax.training import trainer

# The heavy tier (.ci/run): whole puzzle runs through the trainer.
pytestmark = pytest.mark.heavy

TEST_PUZZLES = 24


def tiny_config(variant="tiny", total_steps=4, puzzle="sudoku"):
  configs = sudoku_configs if puzzle == "sudoku" else maze_configs
  config = configs.get_config(variant)
  config.batch_size = 4
  config.total_steps = total_steps
  config.log_every = 2
  config.eval_every = 100
  config.eval_examples = 8
  config.eval_batch_size = 8
  config.test_examples = TEST_PUZZLES
  config.checkpoint_every = 2
  config.optimizer.warmup_steps = 0
  return config


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  summary = trainer.train_and_evaluate(tiny_config(), workdir)
  return workdir, summary


def _final(workdir):
  with checkpoints.Checkpointer(workdir, read_only=True) as ckpt:
    return ckpt.restore()


def test_a_run_trains_evaluates_the_whole_test_set_and_writes_it(straight):
  workdir, summary = straight
  assert summary["step"] == 4
  for key in ("xent", "halt_loss", "cell_accuracy", "exact_accuracy",
              "solver/iterations_mean", "skipped_updates"):
    assert key in summary["train"], key
  test = summary["test"]
  assert test["count"] == TEST_PUZZLES and test["segments"] == 4
  assert 0 <= test["exact_accuracy"] <= 1
  tiers = [test[f"tier/{t}/count"] for t in ("easy", "medium", "hard",
                                             "extreme")]
  assert sum(tiers) == TEST_PUZZLES and min(tiers) > 0
  with open(os.path.join(workdir, "eval", "puzzle_eval.json")) as f:
    written = json.load(f)
  assert written["exact_accuracy"] == test["exact_accuracy"]
  assert written["step"] == 4 and written["model"] == "attractor_reasoner"
  # The checkpoint holds the slots' carry beside model and optimizer.
  restored = _final(workdir)
  assert set(restored.state) == {"model", "optimizer", "task"}
  assert restored.state["task"]["y"].shape == (4, 82, 32)


def test_a_resumed_run_continues_exactly(straight, tmp_path):
  workdir, _ = straight
  split = str(tmp_path / "split")
  first = trainer.train_and_evaluate(tiny_config(), split, stop_at_step=2)
  assert first["step"] == 2
  trainer.train_and_evaluate(tiny_config(), split)
  want, got = _final(workdir), _final(split)
  jax.tree.map(np.testing.assert_array_equal, got.state, want.state)
  assert got.data_state == want.data_state


def test_evaluation_reads_the_weight_average(straight, capsys):
  workdir, _ = straight
  trained, assets, config = trainer.load_trained(workdir)
  assert assets is None and trained.step == 4
  state = trainer.create_train_state(
      trained.model.config, trainer._optimizer_config(config), config.seed)
  with checkpoints.Checkpointer(workdir, read_only=True) as ckpt:
    state.load(ckpt.restore(None, state.pure(), partial=True).state)
  average = nnx.to_pure_dict(nnx.state(state.evaluation_model(), nnx.Param))
  loaded = nnx.to_pure_dict(nnx.state(trained.model, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, loaded, average)
  raw = nnx.to_pure_dict(nnx.state(state.model, nnx.Param))
  assert not np.array_equal(loaded["net"]["blocks"][0]["attn"]["wo"],
                            raw["net"]["blocks"][0]["attn"]["wo"])
  task = tasks.get_task(config)
  result = task.evaluate_workdir(config, workdir, trained, assets)
  assert result["test"]["count"] == TEST_PUZZLES
  assert "exact accuracy" in capsys.readouterr().out
  with pytest.raises(errors.ConfigError, match="config.test_examples"):
    task.evaluate_workdir(config, workdir, trained, assets, eval_batches=2)


@pytest.mark.parametrize("variant", ["trm-tiny", "transformer-tiny"])
def test_the_other_reasoners_train_through_the_same_entry_point(
    variant, tmp_path):
  summary = trainer.train_and_evaluate(tiny_config(variant, total_steps=2),
                                       str(tmp_path))
  assert summary["step"] == 2
  assert summary["train"]["skipped_updates"] == 0
  assert "solver/iterations_mean" not in summary["train"]
  if variant == "transformer-tiny":
    # No halting head: no halting loss (its constant logit would add 5).
    assert summary["train"]["halt_loss"] == 0
    assert summary["train"]["loss"] < 3.0
  assert summary["test"]["count"] == TEST_PUZZLES


def test_a_maze_run_trains(tmp_path):
  config = tiny_config(total_steps=1, puzzle="maze")
  config.batch_size = 2
  summary = trainer.train_and_evaluate(config, str(tmp_path))
  assert set(puzzle_data.MAZE_TIERS) <= {
      k.split("/")[1] for k in summary["test"] if k.startswith("tier/")}


@dataclasses.dataclass(frozen=True)
class OracleConfig:
  max_segments: int = 4
  kind: str = "oracle"


class Oracle(nnx.Module):
  """Answers right at segment `right_at` only, and halts there."""

  def __init__(self, labels, right_at):
    self.config = OracleConfig()
    self.labels = nnx.Variable(jnp.asarray(labels))
    self.right_at = right_at

  def initial_carry(self, batch_size):
    return jnp.zeros((batch_size,), jnp.int32)

  def __call__(self, inputs, carry, *, train=False):
    segment = carry + 1
    right = (segment == self.right_at)[:, None]
    answer = jnp.where(right, self.labels[...], inputs)
    logits = jax.nn.one_hot(answer, 11) * 10.0
    q_halt = jnp.where(segment == self.right_at, 1.0, -1.0)
    return segment, reasoning.SegmentOutput(logits, q_halt, None,
                                            jnp.zeros(()))


def test_the_headline_is_the_last_segment_never_the_best_one():
  data = puzzle_data.load("sudoku", "test").subset(10)
  result = puzzle_eval.evaluate(Oracle(data.labels, right_at=2), data,
                                batch_size=10)
  assert result["segment/2/exact_accuracy"] == 1.0
  assert result["exact_accuracy"] == 0.0            # the 4th segment's
  givens = 1 - data.answer_mask().mean()
  assert result["cell_accuracy"] == pytest.approx(givens)
  assert result["blank_cell_accuracy"] == 0.0
  assert result["halting/exact_accuracy"] == 1.0    # reported beside it
  assert result["halting/segments_mean"] == 2.0
  right = puzzle_eval.evaluate(Oracle(data.labels, right_at=4), data,
                               batch_size=10)
  assert right["exact_accuracy"] == 1.0 and right["cell_accuracy"] == 1.0
  # A last batch padded with copies counts each puzzle once.
  padded = puzzle_eval.evaluate(Oracle(data.labels[:4], right_at=0), data,
                                batch_size=4)
  assert padded["count"] == 10
  assert padded["cell_accuracy"] == pytest.approx(givens)


def test_tier_counts_and_accuracies():
  data = puzzle_data.load("sudoku", "test").subset(8)
  rows = {"exact": np.zeros((2, 8), bool),
          "cells_right": np.zeros((2, 8)), "blanks_right": np.zeros((2, 8)),
          "halt": np.zeros((2, 8), bool)}
  rows["exact"][1, :3] = True
  result = puzzle_eval.summarize(rows, data)
  for tier in data.tier_names:
    in_tier = data.tiers == tier
    assert result[f"tier/{tier}/count"] == in_tier.sum()
    if in_tier.any():
      assert result[f"tier/{tier}/exact_accuracy"] == pytest.approx(
          rows["exact"][1][in_tier].mean())
