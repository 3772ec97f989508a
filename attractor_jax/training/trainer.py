"""The training loop: `train_and_evaluate(config, workdir)`.

One step is `train_step` below: the task's forward and loss, backward
(implicit through an attractor head), optimizer update with non-finite
updates skipped, metrics. The loop around it resumes from the latest
checkpoint of the workdir (model, optimizer, the task's carried arrays and
data position), logs, evaluates, checkpoints, and at the end runs the task's
`finish` (the LM's depth sweep and sample; the puzzles' whole test set).
What depends on the data is the task's (`tasks.Task`).

Why one module of ~420 lines: the loop reads top to bottom, with the
state it carries and the step it runs beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx

from attractor_jax import errors
from attractor_jax import models
from attractor_jax import parallel
from attractor_jax import solvers
from attractor_jax.parallel import distributed
from attractor_jax.training import checkpoints
from attractor_jax.training import metrics as metrics_lib
from attractor_jax.training import optimizers
from attractor_jax.training import run_guards
from attractor_jax.training import tasks
from attractor_jax.training import workdir as workdir_lib


# What a checkpoint keeps of the model: its parameters and the counters of
# its random streams (the reasoner's Jacobian-penalty probes), so that a
# resumed run draws the probes an uninterrupted one would. The streams' keys
# come from the seed and are rebuilt with the model.
MODEL_STATE = (nnx.Param, nnx.RngCount)


@dataclasses.dataclass
class TrainState:
  """The model, its optimizer, the step and the task's carried arrays (all
  mutable NNX objects)."""

  model: nnx.Module
  optimizer: nnx.Optimizer
  task_state: Optional[tasks.TaskState] = None

  def _targets(self) -> dict:
    targets = {"model": self.model, "optimizer": self.optimizer}
    if self.task_state is not None:
      targets["task"] = self.task_state
    return targets

  def _states(self) -> dict:
    """The checkpointed nnx.States: model parameters, optimizer state, and
    the task's carried arrays if it has any."""
    states = {"model": nnx.state(self.model, MODEL_STATE),
              "optimizer": nnx.state(self.optimizer)}
    if self.task_state is not None:
      states["task"] = nnx.state(self.task_state)
    return states

  def pure(self) -> dict:
    """Arrays only, for checkpoints: {"model": ..., "optimizer": ...} (and
    "task")."""
    return {name: nnx.to_pure_dict(state)
            for name, state in self._states().items()}

  def load(self, pure: dict) -> None:
    """Overwrites model, optimizer (and task state) with `pure()`-shaped
    arrays."""
    targets = self._targets()
    for name, state in self._states().items():
      nnx.replace_by_pure_dict(state, pure[name])
      nnx.update(targets[name], state)

  @property
  def step(self) -> int:
    return int(self.optimizer.step[...])

  def evaluation_model(self) -> nnx.Module:
    """The model to evaluate: a copy holding the parameters' moving average
    if the optimizer keeps one (`optimizer.ema_decay`), else the model."""
    return with_ema_params(self.model, self.optimizer)


def with_ema_params(model: nnx.Module, optimizer: nnx.Optimizer
                    ) -> nnx.Module:
  """A copy of `model` with the optimizer's parameter average, or `model`
  itself if the optimizer keeps none."""
  ema = optimizers.ema_params(optimizer.opt_state)
  if ema is None:
    return model
  model = nnx.clone(model)
  params = nnx.state(model, nnx.Param)
  dtypes = jax.tree.map(lambda x: x.dtype, nnx.to_pure_dict(params))
  nnx.replace_by_pure_dict(params, jax.tree.map(
      lambda e, dtype: e.astype(dtype), nnx.to_pure_dict(ema), dtypes))
  nnx.update(model, params)
  return model


def create_train_state(model_config, optimizer_config, seed: int,
                       mesh=None, task_arrays: Optional[dict] = None
                       ) -> TrainState:
  """A freshly initialised model and optimizer, sharded over `mesh` if given.

  Parameters and optimizer moments are placed by the logical-axis rules of
  `attractor_jax.parallel` (each parameter's moments like the parameter);
  a task's carried arrays (`task_arrays`, from `Task.initial_state`) are
  split over the batch like a batch.
  """
  def build():
    model = models.build_model(model_config, rngs=nnx.Rngs(seed))
    tx = optimizers.make_optimizer(optimizer_config)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  if mesh is None:
    model, optimizer = build()
  else:
    # Initialised inside jit straight into its shardings: no process ever
    # holds a full copy of the parameters or the optimizer's moments. The
    # moments sit inside optax's per-group states, so they take their
    # parameter's sharding by path (`shard_like_params`).
    abstract_model, abstract_optimizer = nnx.eval_shape(build)
    model_def, model_state = nnx.split(abstract_model)
    optimizer_def, optimizer_state = nnx.split(abstract_optimizer)
    params = nnx.state(abstract_model, nnx.Param)
    shardings = (parallel.state_shardings(model_state, mesh),
                 parallel.shard_like_params(
                     optimizer_state, parallel.state_shardings(params, mesh),
                     params))
    model_state, optimizer_state = jax.jit(
        lambda: tuple(nnx.split(x)[1] for x in build()),
        out_shardings=shardings)()
    model = nnx.merge(model_def, model_state)
    optimizer = nnx.merge(optimizer_def, optimizer_state)
  task_state = None
  if task_arrays is not None:
    if mesh is not None:
      task_arrays = parallel.shard_batch(task_arrays, mesh)
    task_state = tasks.TaskState(task_arrays)
  return TrainState(model, optimizer, task_state)


@functools.partial(nnx.jit, donate_argnums=(0, 1), static_argnames=("task",))
def train_step(model, optimizer, batch, loss_limit=jnp.inf, task_state=None,
               *, task: tasks.Task):
  """One optimizer step of `task`'s loss on a batch; returns scalar metrics.

  A task that carries arrays between steps gets them in
  batch[tasks.STATE_KEY] from `task_state` (a `tasks.TaskState`), which is
  then overwritten with `task.next_state`.

  A bad step (see `run_guards.step_health`: non-finite loss or gradients, a
  forward solve that failed, a loss past `loss_limit`) changes neither the
  parameters nor the optimizer state: its gradients are replaced by NaN, which
  the optimizer's `apply_if_finite` skips and counts. `health/<check>` says
  which check failed; `bad_steps_in_a_row` counts the current run of them.
  """
  step = optimizer.step[...]
  batch = dict(batch, **{tasks.STEP_KEY: step})
  if task_state is not None:
    batch[tasks.STATE_KEY] = task_state.get()
  probe = solvers.backward_probe()

  def loss_fn(model, probe):
    probed = dict(batch, **{tasks.PROBE_KEY: probe})
    return task.loss(model, probed if task.uses_backward_probe else batch)

  (loss, aux), (grads, probe_grad) = nnx.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(model, probe)
  health = run_guards.step_health(loss, grads, task.solver_stats(aux),
                                  loss_limit)
  bad = functools.reduce(jnp.logical_or, health.values())
  if task_state is not None:
    task_state.set(task.next_state(batch, aux, bad, step))
  grad_norm = optax.tree.norm(grads)
  grads = jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), grads)
  optimizer.update(model, grads)
  scalars = task.step_scalars(aux)
  if task.uses_backward_probe and task.solver_stats(aux) is not None:
    scalars.update(metrics_lib.backward_scalars(probe_grad))
  scalars.update({f"health/{k}": v for k, v in health.items()})
  scalars.update(
      grad_norm=grad_norm,
      skipped_updates=optimizers.skipped_updates(optimizer.opt_state),
      bad_steps_in_a_row=optimizers.consecutive_skipped(optimizer.opt_state))
  return scalars


def cached_train_step(state: TrainState):
  """`train_step` with `state`'s model and optimizer bound, as the training
  loop calls it: `(batch, loss_limit, task_state, *, task)`.

  The bound model and optimizer are traversed once (`nnx.cached_partial`; the
  cached copies share their variables, so `state` sees every update), not by
  `nnx.jit` on every step: Python time that dominates a tiny model's step.
  """
  return nnx.cached_partial(train_step, state.model, state.optimizer)


def _optimizer_config(config) -> optimizers.OptimizerConfig:
  fields = dict(config.optimizer.to_dict(), total_steps=config.total_steps)
  return optimizers.OptimizerConfig.from_config(fields)


def _restore(state: TrainState, checkpointer, model_config, data_iterator):
  """Resumes from the latest readable checkpoint; returns its step (0 if
  none)."""
  restored = checkpointer.restore_latest_readable(
      state.pure(), current_config=model_config)
  if restored is None:
    return 0
  pure, data_state, _, _ = restored
  state.load(pure)
  if data_state:
    data_iterator.set_state(data_state)
  logging.info("Resumed from step %d in %s.", state.step,
               checkpointer.directory)
  return state.step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: Optional[int] = None) -> dict[str, Any]:
  """Trains (resuming if the workdir has checkpoints), then evaluates.

  Holds the workdir's lock throughout (a second trainer is refused). On
  SIGTERM the current step finishes, a checkpoint is saved and made durable,
  and the summary says `preempted`. A run of
  `config.divergence.max_consecutive_bad_steps` bad steps stops the run with
  `run_guards.TrainingDivergedError`; no checkpoint is written during such a
  run, so the good ones are never rotated out.

  Args:
    config: a config of `attractor_jax/configs/lm.py`, `sudoku.py` or
      `maze.py` (its `task` names the task).
    workdir: where checkpoints, metrics and evaluation (and the LM's
      tokenizer) go.
    stop_at_step: stop early at this step, as a preemption would (the last
      step is checkpointed); the schedule still follows config.total_steps.

  Returns:
    The final training and validation metrics and what the task's `finish`
    returned (the LM's depth sweep rows and sample text, the puzzles' test
    results); `preempted` is True if a SIGTERM stopped the run.
  """
  tasks.validate_config(config, workdir)    # before anything is written
  with run_guards.WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir, stop_at_step)


def _train_and_evaluate(config, workdir, stop_at_step):
  task = tasks.get_task(config)
  data = task.prepare_data(config, workdir)
  model_config = task.model_config(config, data)
  mesh = parallel.make_mesh(**config.mesh.to_dict())
  optimizer_config = _optimizer_config(config)
  learning_rate = optimizers.lr_schedule(optimizer_config)
  state = create_train_state(model_config, optimizer_config, config.seed, mesh,
                             task.initial_state(config, model_config))
  train_iterator = iter(data.train)
  checkpointer = checkpoints.Checkpointer(
      workdir, max_to_keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every)
  step = _restore(state, checkpointer, model_config, train_iterator)
  preemption = run_guards.PreemptionWatcher(checkpointer)
  last_step = min(config.total_steps, stop_at_step or config.total_steps)
  loss_limit = run_guards.loss_limit(config, model_config.vocab_size)
  writer = metrics_lib.MetricWriter(workdir, resume_step=step)
  unit, items_per_step = task.items_per_step(config)
  progress = metrics_lib.ProgressLine(
      config.total_steps, tokens_per_step=items_per_step,
      keys=task.progress_keys, unit=task.progress_unit)
  summary: dict[str, Any] = {"start_step": step, "preempted": False}
  scalars = {}
  # Solver scalars are logged over every step since the last log.
  aggregator = metrics_lib.StepAggregator()
  logged_step, logged_time = step, time.perf_counter()
  config_saved = False
  step_fn = cached_train_step(state)
  try:
    while step < last_step:
      batch = parallel.shard_batch(next(train_iterator), mesh)
      scalars = step_fn(batch, loss_limit, state.task_state, task=task)
      step += 1
      bad_in_a_row = int(scalars["bad_steps_in_a_row"])
      if not config_saved:
        # Only a config that restored and ran a step may describe the workdir.
        if distributed.is_main_process():
          workdir_lib.save_config(config, workdir)
        config_saved = True
      diverged = bad_in_a_row and _report_bad_step(config, step,
                                                   bad_in_a_row, scalars)
      aggregator.add(scalars)
      if step % config.log_every == 0 or step == last_step or diverged:
        scalars = aggregator.reduce(scalars)
        scalars["lr"] = float(learning_rate(step - 1))
        scalars.update(metrics_lib.gate_means(state.model))
        now = time.perf_counter()
        scalars[f"{unit}_per_s"] = (items_per_step * (step - logged_step)
                                    / max(now - logged_time, 1e-9))
        logged_step, logged_time = step, now
        writer.write_scalars(step, scalars)
        progress.print(step, scalars)
      if diverged:
        set_aside = checkpointer.set_aside_unconfirmed("diverged")
        raise run_guards.TrainingDivergedError(run_guards.diverged_message(
            step, bad_in_a_row, diverged, loss_limit,
            checkpointer.latest_step(), checkpointer.directory, set_aside))
      if not bad_in_a_row:
        checkpointer.confirm()    # the checkpoint before this step is good
      if step % config.eval_every == 0 or step == last_step:
        val = task.evaluate(state.evaluation_model(), data)
        writer.write_scalars(step, {f"val/{k}": v for k, v in val.items()})
        if distributed.is_main_process():
          print(task.describe_validation(step, val), flush=True)
        summary["validation"] = val
      preempted = preemption.should_stop(step)
      # Never checkpoint in the middle of a run of bad steps.
      if not bad_in_a_row and (step % config.checkpoint_every == 0
                               or step == last_step or preempted):
        checkpointer.save(step, state.pure(), train_iterator.get_state(),
                          model_config, force=True)
      if preempted:
        checkpointer.wait_until_finished()
        print(f"Preempted at step {step}: the latest checkpoint is step "
              f"{checkpointer.latest_step()} in {checkpointer.directory}; "
              "run the same command again to resume.", flush=True)
        summary["preempted"] = True
        break
  finally:
    preemption.close()
    checkpointer.wait_until_finished()
    checkpointer.close()
    writer.close()
  summary.update(step=step, train={k: float(v) for k, v in scalars.items()})
  if step == config.total_steps and step > summary["start_step"]:
    summary.update(task.finish(config, workdir, state.evaluation_model(),
                               data))
  return summary


def _report_bad_step(config, step, bad_in_a_row, scalars) -> Optional[str]:
  """Warns at the start of a run of bad steps; once the run is too long,
  returns what went wrong in its last step (else None)."""
  flags = {k.split("/", 1)[1]: bool(v) for k, v in scalars.items()
           if k.startswith("health/")}
  reasons = run_guards.describe_bad_step(flags)
  if bad_in_a_row == 1:
    logging.warning("Step %d skipped: %s.", step, reasons)
    print(f"warning: step {step} skipped: {reasons} (loss "
          f"{float(scalars['loss']):.4g}).", flush=True)
  limit = config.divergence.max_consecutive_bad_steps
  return reasons if limit and bad_in_a_row >= limit else None


@dataclasses.dataclass
class TrainedModel:
  """A model restored for inference, and the step it was saved at."""

  model: nnx.Module
  step: int


def load_trained(workdir: str, step: Optional[int] = None):
  """(TrainedModel, assets, config) of a run's checkpoint (default: the
  latest readable one); assets are what the task needs beside the model
  (the LM's tokenizer, see `Task.inference_setup`).

  Only the parameters are read, unless the run kept a moving average of
  them (`optimizer.ema_decay`): then the optimizer state is read too and the
  model holds the average, as evaluation during training used.

  Raises:
    FileNotFoundError: not a training workdir, or no checkpoint there.
    checkpoints.CheckpointError: the checkpoint (or, for the latest, every
      checkpoint) cannot be read.
  """
  config = workdir_lib.load_config(workdir)
  task = tasks.get_task(config)
  model_config, assets = task.inference_setup(config, workdir)
  ema = config.optimizer.get("ema_decay") is not None
  if ema:
    state = create_train_state(model_config, _optimizer_config(config),
                               config.seed)
    target = {"model": state.pure()["model"],
              "optimizer": state.pure()["optimizer"]}
  else:
    model = models.build_model(model_config, rngs=nnx.Rngs(config.seed))
    target = {"model": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
  with checkpoints.Checkpointer(workdir, read_only=True) as checkpointer:
    if step is None:
      restored = checkpointer.restore_latest_readable(
          target, current_config=model_config, partial=True,
          move_corrupt=False)
      if restored is None:
        raise errors.MissingPathError(
            f"No checkpoint in {checkpointer.directory}: train first.")
    else:
      restored = checkpointer.restore(step, target,
                                      current_config=model_config,
                                      partial=True)
  if ema:
    state.load(restored.state)
    model = state.evaluation_model()
  else:
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, restored.state["model"])
    nnx.update(model, params)
  return TrainedModel(model, restored.step), assets, config
