"""The model registry and the task seam: the trainer's step knows no kind
names and no text."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax import errors
from attractor_jax import models
from attractor_jax.configs import lm
from attractor_jax.models import registry
from attractor_jax.models.config import ModelConfig
from attractor_jax.training import lm_task
from attractor_jax.training import optimizers
from attractor_jax.training import tasks
from attractor_jax.training import trainer


def test_every_lm_kind_says_what_it_supports():
  assert set(registry.kinds()) >= {"attractor", "gpt", "looped", "deq"}
  assert registry.supports("attractor", registry.CACHED_DECODING)
  assert registry.supports("deq", registry.SOLVER_STATS)
  assert not registry.supports("gpt", registry.DEPTH_SWEEP)
  assert not registry.supports("looped", registry.SOLVER_STATS)
  looped = ModelConfig(kind="looped", mean_depth=3)
  assert registry.sweep_depth(looped) == 6
  attractor = ModelConfig(kind="attractor")
  assert registry.sweep_depth(attractor) == attractor.solve.max_iter
  with pytest.raises(ValueError, match="fixed depth"):
    registry.sweep_depth(ModelConfig(kind="gpt"))
  assert models.model_class("gpt").__name__ == "GPT"


def test_registry_refuses_unknown_and_conflicting_entries():
  with pytest.raises(errors.ConfigError, match="Unknown model kind 'rnn'.*"
                     "attractor"):
    registry.entry("rnn")
  with pytest.raises(ValueError, match="Unknown feature"):
    registry.supports("gpt", "telepathy")
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.ModelEntry("gpt", ModelConfig, "x", "Y"))
  with pytest.raises(ValueError, match="needs sweep_depth"):
    registry.ModelEntry("z", ModelConfig, "x", "Y",
                        features={registry.DEPTH_SWEEP})


def test_tasks_by_name():
  config = lm.get_config()
  assert isinstance(tasks.get_task(config), lm_task.LMTask)
  del config["task"]                     # a config.json from before tasks
  assert tasks.get_task(config).name == "lm"
  with pytest.raises(errors.ConfigError, match="Unknown task 'chess'"):
    tasks.get_task(config, "chess")


class Line(nnx.Module):
  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (3,)))


@dataclasses.dataclass(frozen=True)
class LineFit(tasks.Task):
  """A task with no text, no kind and no solver: fit y = x . w."""

  name: str = "line"

  def loss(self, model, batch):
    error = batch["x"] @ model.w[...] - batch["y"]
    return jnp.mean(error ** 2), error

  def solver_stats(self, aux):
    return None

  def step_scalars(self, aux):
    return {"max_error": jnp.max(jnp.abs(aux))}


def test_the_train_step_runs_any_task():
  model = Line(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optimizers.make_optimizer(
      optimizers.OptimizerConfig(name="adamw", lr=0.1, clip_norm=None)),
      wrt=nnx.Param)
  x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
  batch = {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}
  first = trainer.train_step(model, optimizer, batch, task=LineFit())
  for _ in range(150):
    last = trainer.train_step(model, optimizer, batch, task=LineFit())
  assert float(last["max_error"]) < 0.1 * float(first["max_error"])
  assert int(last["skipped_updates"]) == 0
  # A NaN target is a bad step: skipped, counted, parameters unchanged.
  before = np.asarray(model.w[...])
  bad = dict(batch, y=np.full_like(batch["y"], np.nan))
  scalars = trainer.train_step(model, optimizer, bad, task=LineFit())
  assert int(scalars["skipped_updates"]) == 1
  assert bool(scalars["health/loss_nonfinite"])
  np.testing.assert_array_equal(np.asarray(model.w[...]), before)
