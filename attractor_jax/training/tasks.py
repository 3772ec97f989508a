"""The seam between the trainer and what it trains: a `Task`.

A task owns everything that depends on the kind of data: reading it, the
model config it implies, the loss and its metrics, periodic evaluation and
what happens after training. The trainer (`trainer.py`) owns the rest:
state, optimizer, the guarded step, checkpoints, preemption, logging. A
config names its task with `config.task` ("lm" if absent, so configs saved
before tasks existed still load).

    task = tasks.get_task(config)
    model_config = task.validate_config(config, workdir)   # before writing
    data = task.prepare_data(config, workdir)
    model_config = task.model_config(config, data)
    state = task.initial_state(config, model_config)       # or None
    loss, aux = task.loss(model, batch)          # inside jit
    scalars = task.step_scalars(aux)             # inside jit
    state = task.next_state(batch, aux, bad, step)         # inside jit
    validation = task.evaluate(model, data)      # every eval_every steps
    results = task.finish(config, workdir, model, data)

A task that carries arrays from one step to the next (the puzzle task's
deep-supervision carry) returns them from `initial_state`; the trainer keeps
them in a `TaskState`, passes them to `loss` inside the batch under
`STATE_KEY`, stores `next_state`'s result and checkpoints them with the
model, so a resumed run continues exactly.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from attractor_jax import errors

DEFAULT_TASK = "lm"
# The batch key under which `loss` finds the task's carried state.
STATE_KEY = "task_state"
# The batch key of a `backward_probe` (tasks that set `uses_backward_probe`
# pass it to their model's solve; the trainer logs what it reports).
PROBE_KEY = "backward_probe"
# The batch key of the optimizer's step count (int32 scalar), from which a
# task derives the step's randomness (resumes draw the same).
STEP_KEY = "step"

# name -> "module:Class" or a Task subclass. The built-in tasks live in
# attractor_jax/tasks/ and are named here, not imported: each is imported on
# use, so the loop never imports a task package and an LM run does not import
# the puzzle code. `register_task` adds your own.
_TASKS: dict[str, Any] = {
    "lm": "attractor_jax.tasks.lm:LMTask",
    "puzzle": "attractor_jax.tasks.puzzles:PuzzleTask",
    "extrapolation": "attractor_jax.tasks.extrapolation:ExtrapolationTask",
}


class Task:
  """What a training run learns. Subclasses are hashable (frozen
  dataclasses without array fields), since the jitted step takes the task as
  a static argument."""

  name: str = ""
  # Scalars the console progress line shows, and its throughput unit.
  progress_keys = ("loss",)
  progress_unit = "tok"
  # Whether `loss` hands batch[PROBE_KEY] to the model's fixed-point solve.
  uses_backward_probe = False
  # Keyword arguments of `evaluate_workdir` beyond eval_batches that
  # `python -m attractor_jax.evaluate` may pass (its --test_sizes, --max_iter).
  evaluate_options: tuple[str, ...] = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Task":
    """The task of a training config (its static settings)."""
    del config
    return cls()

  def validate_config(self, config: ml_collections.ConfigDict,
                      workdir: Optional[str] = None, *,
                      num_devices: Optional[int] = None):
    """Checks the whole config before anything is read or written; returns
    the model config. Raises `errors.UserError`s naming field and fix."""
    raise NotImplementedError

  def prepare_data(self, config: ml_collections.ConfigDict,
                   workdir: str) -> Any:
    """Reads or builds the data; returns an object with a `train` iterable
    of batches (its iterator checkpointable, as grain's) and whatever the
    task's evaluation needs."""
    raise NotImplementedError

  def model_config(self, config: ml_collections.ConfigDict, data: Any):
    """The model config of this run (a registered kind's config)."""
    raise NotImplementedError

  def initial_state(self, config: ml_collections.ConfigDict, model_config
                    ) -> Optional[dict[str, Any]]:
    """Arrays carried between steps, each `[batch, ...]` (None: none)."""
    del config, model_config
    return None

  def loss(self, model, batch: dict) -> tuple[jax.Array, Any]:
    """(scalar loss, aux) of one batch; traced inside the jitted step. With
    an `initial_state`, batch[STATE_KEY] holds the carried arrays."""
    raise NotImplementedError

  def next_state(self, batch: dict, aux: Any, bad: jax.Array,
                 step: jax.Array) -> dict[str, Any]:
    """The carried arrays after a step (inside jit); `bad` is True when the
    step was skipped, `step` counts steps before this one."""
    del aux, bad, step
    return batch[STATE_KEY]

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

  def describe_validation(self, step: int, validation: dict[str, float]
                          ) -> str:
    """The line the trainer prints after a validation."""
    return f"step {step}: validation " + ", ".join(
        f"{key} {value:.4g}" for key, value in validation.items()
        if isinstance(value, (int, float)))

  def finish(self, config: ml_collections.ConfigDict, workdir: str, model,
             data: Any) -> dict[str, Any]:
    """Work after the last step (sweeps, samples); returns its results."""
    del config, workdir, model, data
    return {}

  def inference_setup(self, config: ml_collections.ConfigDict, workdir: str
                      ) -> tuple[Any, Any]:
    """(model config, assets) to rebuild a trained model from its workdir;
    assets are what commands need beside the model (the LM's tokenizer)."""
    raise NotImplementedError

  def evaluate_workdir(self, config: ml_collections.ConfigDict, workdir: str,
                       trained, assets: Any, *,
                       eval_batches: Optional[int] = None, **options
                       ) -> dict[str, Any]:
    """`python -m attractor_jax.evaluate`: evaluates a restored model
    (`trainer.TrainedModel`), prints and writes the results under
    workdir/eval/, and returns them. `options`: those of
    `evaluate_options` the command was given."""
    raise NotImplementedError


class TaskStateVariable(nnx.Variable):
  """Arrays a task carries between training steps (not trained)."""


class TaskState(nnx.Module):
  """The mutable holder of a task's carried arrays (see `Task.initial_state`).

  A module, so that `nnx.jit` writes its updates back and checkpoints see it
  as an `nnx.State`.
  """

  def __init__(self, arrays: dict[str, Any]):
    self.names = tuple(sorted(arrays))
    for name in self.names:
      setattr(self, name, TaskStateVariable(jnp.asarray(arrays[name])))

  def get(self) -> dict[str, jax.Array]:
    return {name: getattr(self, name)[...] for name in self.names}

  def set(self, arrays: dict[str, Any]) -> None:
    for name in self.names:
      getattr(self, name)[...] = arrays[name]


def register_task(name: str, task: Any) -> None:
  """Makes `config.task = name` train `task`: a `Task` subclass, or its
  "module:Class" path (imported on first use)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"A task name must be a non-empty string; got {name!r}.")
  _TASKS[name] = task


def registered_tasks() -> tuple[str, ...]:
  """The names `config.task` may take."""
  return tuple(_TASKS)


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
  task_class = _TASKS[name]
  if isinstance(task_class, str):
    module, class_name = task_class.split(":")
    task_class = getattr(importlib.import_module(module), class_name)
  return task_class.from_config(config)


def validate_config(config: ml_collections.ConfigDict,
                    workdir: Optional[str] = None, *,
                    num_devices: Optional[int] = None):
  """Checks a whole training config of any task before anything is read or
  written (the task's `validate_config`); returns the model config.

  Raises:
    errors.ConfigError: an unknown task, or what the task refuses.
  """
  return get_task(config).validate_config(
      config, workdir, num_devices=num_devices)
