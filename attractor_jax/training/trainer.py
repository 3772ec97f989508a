"""The training loop: `train_and_evaluate(config, workdir)`.

One step is `train_step` below: forward, loss, backward (implicit through the
attractor head), optimizer update with non-finite updates skipped, metrics.
The loop around it resumes from the latest checkpoint of the workdir (model,
optimizer and data position), logs, evaluates, checkpoints, and at the end
sweeps test-time depth and prints a sample.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from attractor_jax import data as data_lib
from attractor_jax import models
from attractor_jax import parallel
from attractor_jax.training import checkpoints
from attractor_jax.training import evaluation
from attractor_jax.training import experiment
from attractor_jax.training import generation
from attractor_jax.training import metrics as metrics_lib
from attractor_jax.training import optimizers


@dataclasses.dataclass
class TrainState:
  """The model, its optimizer and the step (all mutable NNX objects)."""

  model: nnx.Module
  optimizer: nnx.Optimizer

  def _states(self) -> dict:
    """The checkpointed nnx.States: model parameters, optimizer state."""
    return {"model": nnx.state(self.model, nnx.Param),
            "optimizer": nnx.state(self.optimizer)}

  def pure(self) -> dict:
    """Arrays only, for checkpoints: {"model": ..., "optimizer": ...}."""
    return {name: nnx.to_pure_dict(state)
            for name, state in self._states().items()}

  def load(self, pure: dict) -> None:
    """Overwrites model and optimizer with `pure()`-shaped arrays."""
    targets = {"model": self.model, "optimizer": self.optimizer}
    for name, state in self._states().items():
      nnx.replace_by_pure_dict(state, pure[name])
      nnx.update(targets[name], state)

  @property
  def step(self) -> int:
    return int(self.optimizer.step[...])


def create_train_state(model_config, optimizer_config, seed: int,
                       mesh=None) -> TrainState:
  """A freshly initialised model and optimizer, sharded over `mesh` if given.

  Parameters and optimizer moments are placed by the logical-axis rules of
  `attractor_jax.parallel` (each parameter's moments like the parameter).
  """
  model = models.build_model(model_config, rngs=nnx.Rngs(seed))
  tx = optimizers.make_optimizer(optimizer_config)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  if mesh is not None:
    for target in (model, optimizer):
      state = nnx.state(target)
      nnx.update(target, jax.device_put(
          state, parallel.state_shardings(state, mesh)))
  return TrainState(model, optimizer)


@functools.partial(nnx.jit, donate_argnums=(0, 1))
def train_step(model, optimizer, batch):
  """One optimizer step on a batch; returns scalar metrics."""

  def loss_fn(model):
    out = model(batch["inputs"], targets=batch["targets"],
                positions=batch["positions"], segment_ids=batch["segment_ids"])
    return out.loss, out

  (loss, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  del loss  # in `out`
  scalars = metrics_lib.lm_scalars(out)
  scalars.update(
      grad_norm=optax.tree.norm(grads),
      skipped_updates=optimizers.skipped_updates(optimizer.opt_state))
  return scalars


def _optimizer_config(config) -> optimizers.OptimizerConfig:
  fields = dict(config.optimizer.to_dict(), total_steps=config.total_steps)
  return optimizers.OptimizerConfig.from_config(fields)


def _restore(state: TrainState, checkpointer, model_config, data_iterator):
  """Resumes from the latest checkpoint; returns its step (0 if none)."""
  restored = checkpointer.maybe_restore(state.pure(),
                                        current_config=model_config)
  if restored is None:
    return 0
  pure, data_state, _ = restored
  state.load(pure)
  if data_state:
    data_iterator.set_state(data_state)
  logging.info("Resumed from step %d in %s.", state.step,
               checkpointer.directory)
  return state.step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: Optional[int] = None) -> dict[str, Any]:
  """Trains (resuming if the workdir has checkpoints), evaluates, samples.

  Args:
    config: a config of `attractor_jax/configs/lm.py`.
    workdir: where checkpoints, tokenizer, metrics and evaluation go.
    stop_at_step: stop early at this step, as a preemption would (the last
      step is checkpointed); the schedule still follows config.total_steps.

  Returns:
    The final training and validation metrics, the depth sweep rows and the
    sample text.
  """
  os.makedirs(workdir, exist_ok=True)
  data = experiment.prepare_data(config, workdir)
  model_config = experiment.model_config_from(config, data.tokenizer.vocab_size)
  mesh = parallel.make_mesh(**config.mesh.to_dict())
  optimizer_config = _optimizer_config(config)
  learning_rate = optimizers.lr_schedule(optimizer_config)
  state = create_train_state(model_config, optimizer_config, config.seed, mesh)
  train_iterator = iter(data.train)
  checkpointer = checkpoints.Checkpointer(
      workdir, max_to_keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every)
  step = _restore(state, checkpointer, model_config, train_iterator)
  experiment.save_config(config, workdir)    # only once it is compatible
  last_step = min(config.total_steps, stop_at_step or config.total_steps)
  writer = metrics_lib.MetricWriter(workdir)
  tokens_per_step = config.batch_size * config.data.seq_len
  progress = metrics_lib.ProgressLine(config.total_steps,
                                      tokens_per_step=tokens_per_step)
  summary: dict[str, Any] = {"start_step": step}
  scalars = {}
  logged_step, logged_time = step, time.perf_counter()
  while step < last_step:
    batch = parallel.shard_batch(next(train_iterator), mesh)
    scalars = train_step(state.model, state.optimizer, batch)
    step += 1
    if step % config.log_every == 0 or step == last_step:
      scalars = {k: float(v) for k, v in jax.device_get(scalars).items()}
      scalars["lr"] = float(learning_rate(step - 1))
      scalars.update(metrics_lib.gate_means(state.model))
      now = time.perf_counter()
      scalars["tokens_per_s"] = (tokens_per_step * (step - logged_step)
                                 / max(now - logged_time, 1e-9))
      logged_step, logged_time = step, now
      writer.write_scalars(step, scalars)
      progress.print(step, scalars)
      if not np.isfinite(scalars["loss"]):
        logging.warning("Non-finite loss at step %d.", step)
    if step % config.eval_every == 0 or step == last_step:
      val = evaluation.evaluate(state.model, data.validation)
      writer.write_scalars(step, {f"val/{k}": v for k, v in val.items()})
      summary["validation"] = val
    if (step % config.checkpoint_every == 0 or step == last_step
        or checkpointer.reached_preemption(step)):
      checkpointer.save(step, state.pure(), train_iterator.get_state(),
                        model_config, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  summary.update(step=step, train={k: float(v) for k, v in scalars.items()})
  if step == config.total_steps and step > summary["start_step"]:
    summary.update(_finish(config, workdir, state, data))
  writer.close()
  return summary


def _finish(config, workdir, state: TrainState, data) -> dict[str, Any]:
  """Depth sweep and a sample from the trained model."""
  results = {}
  if config.depth_sweep and state.model.config.kind in ("attractor", "deq",
                                                        "looped"):
    rows = evaluation.depth_sweep(state.model, data.validation)
    evaluation.write_depth_sweep(rows, os.path.join(workdir, "eval"))
    results["depth_sweep"] = rows
    print("\nTest-time depth sweep (T = 0 decodes the proposal c):\n"
          + evaluation.format_table(rows))
  if state.model.config.kind == "attractor" and config.sample.num_tokens:
    results["sample"] = sample_text(state.model, data.tokenizer, config.sample,
                                    seed=config.seed)
    with open(os.path.join(workdir, "sample.txt"), "w",
              encoding="utf-8") as f:
      f.write(results["sample"])
    print(f"\nSample:\n{results['sample']}\n")
  return results


def sample_text(model, tokenizer, sample_config, *, seed: int = 0,
                cached: bool = True) -> str:
  """Decodes `sample_config.num_tokens` tokens after the prompt."""
  prompt = tokenizer.encode(sample_config.prompt) or [tokenizer.eos_id]
  tokens = generation.generate(
      model, jnp.asarray([prompt], jnp.int32), sample_config.num_tokens,
      key=jax.random.PRNGKey(seed), temperature=sample_config.temperature,
      top_k=sample_config.top_k or None, cached=cached)
  return tokenizer.decode([int(t) for t in tokens[0]])


def load_trained(workdir: str, step: Optional[int] = None):
  """(TrainState, tokenizer, config) of a run's checkpoint (default latest).

  Raises:
    FileNotFoundError: not a training workdir, or no checkpoint there.
  """
  config = experiment.load_config(workdir)
  tokenizer = data_lib.load_tokenizer(os.path.join(workdir, "tokenizer.model"))
  model_config = experiment.model_config_from(config, tokenizer.vocab_size)
  state = create_train_state(model_config, _optimizer_config(config),
                             config.seed)
  with checkpoints.Checkpointer(workdir) as checkpointer:
    pure, _, _ = checkpointer.restore(step, state.pure(),
                                      current_config=model_config)
  state.load(pure)
  return state, tokenizer, config
