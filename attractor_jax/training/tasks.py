"""The seam between the trainer and what it trains: a `Task`.

A task owns everything that depends on the kind of data: reading it, the
model config it implies, the loss and its metrics, periodic evaluation and
what happens after training. The trainer (`trainer.py`) owns the rest:
state, optimizer, the guarded step, checkpoints, preemption, logging. A
config names its task with `config.task` ("lm" if absent, so configs saved
before tasks existed still load).

    task = tasks.get_task(config)
    data = task.prepare_data(config, workdir)
    model_config = task.model_config(config, data)
    loss, aux = task.loss(model, batch)          # inside jit
    scalars = task.step_scalars(aux)             # inside jit
    validation = task.evaluate(model, data)      # every eval_every steps
    results = task.finish(config, workdir, model, data)
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import jax
import ml_collections

from attractor_jax import errors

DEFAULT_TASK = "lm"

# name -> (module, class): imported on use, so an LM run does not import the
# puzzle code and the other way round.
_TASKS = {
    "lm": ("attractor_jax.training.lm_task", "LMTask"),
}


class Task:
  """What a training run learns. Subclasses are hashable (frozen
  dataclasses without array fields), since the jitted step takes the task as
  a static argument."""

  name: str = ""

  def prepare_data(self, config: ml_collections.ConfigDict,
                   workdir: str) -> Any:
    """Reads or builds the data; returns an object with a `train` iterable
    of batches (its iterator checkpointable, as grain's) and whatever the
    task's evaluation needs."""
    raise NotImplementedError

  def model_config(self, config: ml_collections.ConfigDict, data: Any):
    """The model config of this run (a registered kind's config)."""
    raise NotImplementedError

  def loss(self, model, batch: dict) -> tuple[jax.Array, Any]:
    """(scalar loss, aux) of one batch; traced inside the jitted step."""
    raise NotImplementedError

  def solver_stats(self, aux: Any):
    """The forward solve's `SolverStats` in `aux`, or None."""
    return getattr(aux, "stats", None)

  def step_scalars(self, aux: Any) -> dict[str, jax.Array]:
    """Scalar metrics of one step from `aux`; traced inside the jitted step."""
    raise NotImplementedError

  def items_per_step(self, config: ml_collections.ConfigDict
                     ) -> tuple[str, int]:
    """(unit, count) for throughput, e.g. ("tokens", batch * seq_len)."""
    return "examples", int(config.batch_size)

  def evaluate(self, model, data: Any) -> dict[str, float]:
    """The periodic validation metrics."""
    raise NotImplementedError

  def finish(self, config: ml_collections.ConfigDict, workdir: str, model,
             data: Any) -> dict[str, Any]:
    """Work after the last step (sweeps, samples); returns its results."""
    del config, workdir, model, data
    return {}


def task_name(config: ml_collections.ConfigDict) -> str:
  return config.get("task", DEFAULT_TASK) or DEFAULT_TASK


def get_task(config: ml_collections.ConfigDict,
             name: Optional[str] = None) -> Task:
  """The task `config.task` (or `name`) names.

  Raises:
    errors.ConfigError: an unknown task (the message lists the known ones).
  """
  name = name or task_name(config)
  if name not in _TASKS:
    raise errors.ConfigError(
        f"Unknown task {name!r}; expected one of {', '.join(_TASKS)}.\n"
        "Set config.task in the config file.")
  module, class_name = _TASKS[name]
  return getattr(importlib.import_module(module), class_name)()
