"""The extrapolation task: configs, models, loss, training and evaluation."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax import errors
from attractor_jax import models
from attractor_jax.configs import extrapolation
from attractor_jax.configs import sudoku
from attractor_jax.models.reasoning import conv
from attractor_jax.tasks.extrapolation import evaluation
from attractor_jax.tasks.extrapolation import generators
from attractor_jax.tasks.extrapolation import task as task_lib
from attractor_jax.training import tasks
from attractor_jax.training import trainer

import command_modules


def tiny_config(variant="prefix-sums", total_steps=30):
  config = extrapolation.get_config(variant)
  config.total_steps = total_steps
  config.log_every = 10
  config.eval_every = total_steps
  config.checkpoint_every = total_steps
  config.eval_examples = 8
  config.test_examples = 8
  config.eval_batch_size = 8
  config.data.train_size = 8
  config.data.test_sizes = (8, 16)
  config.evaluation.budgets = (4, 8)
  config.evaluation.budget_sizes = (16,)
  config.training.max_warm = 4
  config.training.steps = 2
  config.solve.max_iter = 10
  return config


@pytest.mark.parametrize("variant", extrapolation.VARIANTS)
def test_every_variant_validates_and_builds_a_size_agnostic_model(variant):
  config = extrapolation.get_config(variant)
  model_config = tasks.validate_config(config)
  task = tasks.get_task(config)
  assert isinstance(task, task_lib.ExtrapolationTask)
  model = models.build_model(model_config, rngs=nnx.Rngs(0))
  problem = config.data.problem
  for size in (config.data.train_size, max(config.data.test_sizes)):
    x = generators.test_set(problem, size, 2).inputs
    logits = model.readout(model.encode(jnp.asarray(x)))
    assert logits.shape == x.shape[:-1] + (2,)


@pytest.mark.parametrize("problem", ["prefix-sums", "mazes"])
def test_the_feedforward_baseline_has_about_the_reasoners_parameters(problem):
  reasoner = models.parameter_count(tasks.validate_config(
      extrapolation.get_config(problem)))
  feedforward = models.parameter_count(tasks.validate_config(
      extrapolation.get_config(problem + "-feedforward")))
  assert 0.9 < feedforward / reasoner < 1.1


def test_bad_configs_name_the_field():
  with pytest.raises(errors.ConfigError, match="Did you mean 'mazes'"):
    extrapolation.get_config("maze")
  config = extrapolation.get_config()
  config.training.mode = "unrolled"
  with pytest.raises(errors.ConfigError, match="training.mode"):
    tasks.validate_config(config)
  config = extrapolation.get_config()
  config.data.test_sizes = (32, 0)
  with pytest.raises(errors.ConfigError, match="data.test_sizes"):
    tasks.validate_config(config)
  config = extrapolation.get_config()
  config.model.depth = 4
  with pytest.raises(errors.ConfigError, match="depth"):
    tasks.validate_config(config)


def test_progressive_loss_draws_from_the_step():
  config = tiny_config()
  task = tasks.get_task(config)
  model = models.build_model(task.model_config(config, None),
                             rngs=nnx.Rngs(0))
  batch = next(generators.TrainStream("prefix_sums", 8, 4, seed=0))
  loss = nnx.jit(lambda m, b: task.loss(m, b)[0])
  at = lambda step: float(loss(model, dict(batch, **{
      tasks.STEP_KEY: jnp.int32(step)})))
  assert at(3) == at(3)
  assert len({at(step) for step in range(6)}) > 1


def test_evaluate_flags_apply_only_to_tasks_that_take_them():
  task = tasks.get_task(extrapolation.get_config())
  # The command defines absl flags: imported only for this test, as the
  # other command tests do.
  with command_modules.imported("evaluate") as evaluate_command:
    assert evaluate_command.task_options(task, ["8", "16"], 40) == {
        "test_sizes": (8, 16), "max_iter": 40}
    puzzle = tasks.get_task(sudoku.get_config("tiny"))
    with pytest.raises(errors.ConfigError, match="--max_iter does not apply"):
      evaluate_command.task_options(puzzle, None, 40)


def test_evaluation_scores_exact_solutions_and_pads_short_batches():
  config = conv.ConvReasonerConfig(solve=conv.DEFAULT_SOLVE)
  model = models.build_model(config, rngs=nnx.Rngs(0))
  examples = generators.test_set("prefix_sums", 8, 5)
  rows = evaluation.solve(model, examples, max_iter=5, batch_size=4)
  assert rows["exact"].shape == (5,) and rows["iterations"].max() <= 5
  logits, _ = nnx.jit(lambda m, x: m(x, max_iter=5))(
      model, jnp.asarray(examples.inputs))
  right = np.all(np.argmax(logits, -1) == examples.targets, axis=1)
  np.testing.assert_array_equal(rows["exact"], right)
  curve = evaluation.budget_curve(model, examples, (1, 3), batch_size=4)
  assert set(curve) == {"looped/1", "looped/3", "solve/1", "solve/3"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("extrapolation"))
  return workdir, trainer.train_and_evaluate(tiny_config(), workdir)


@pytest.mark.heavy
def test_a_tiny_run_trains_and_writes_every_test_size(trained):
  workdir, summary = trained
  assert summary["step"] == 30
  assert summary["train"]["loss"] < 0.69     # below a uniform guess
  assert set(summary["test"]) == {"8", "16"}
  with open(os.path.join(workdir, "eval", "extrapolation.json")) as f:
    written = json.load(f)
  assert written["step"] == 30 and written["model"] == "conv_reasoner"
  for size in ("8", "16"):
    row = written["sizes"][size]
    assert row["count"] == 8 and row["max_iter"] == 100 + 4 * int(size)
    assert 0 <= row["converged_fraction"] <= 1
  assert "looped/8" in written["sizes"]["16"]
  table = open(os.path.join(workdir, "eval", "extrapolation.md")).read()
  assert "| 16 | 8 |" in table


@pytest.mark.heavy
def test_a_saved_workdir_evaluates_at_new_sizes_and_budget(trained):
  workdir, summary = trained
  restored, assets, config = trainer.load_trained(workdir)
  task = tasks.get_task(config)
  # The restored model is the trained one: at the run's own step limit it
  # answers as the run's final evaluation did.
  same = task.evaluate_workdir(config, workdir, restored, assets,
                               test_sizes=(8,))
  for key in ("exact_accuracy", "iterations_mean", "max_iter"):
    assert same["test"]["8"][key] == summary["test"]["8"][key], key
  result = task.evaluate_workdir(config, workdir, restored, assets,
                                 test_sizes=(24,), max_iter=7)
  assert set(result["test"]) == {"24"}
  assert result["test"]["24"]["iterations_max"] <= 7
  with pytest.raises(errors.ConfigError, match="eval_batches"):
    task.evaluate_workdir(config, workdir, restored, assets, eval_batches=1)
