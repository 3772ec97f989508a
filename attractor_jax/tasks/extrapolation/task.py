"""Logical extrapolation (prefix sums, mazes of any size) as a `tasks.Task`.

Training draws fresh instances at `config.data.train_size` every step
(`generators.TrainStream`). The attractor reasoner trains in one of two
modes (`config.training.mode`):

- "progressive": c = encode(x); n ~ U{0..max_warm-1} detached map
  applications from c, then `steps` with gradients
  (`AttractorHead.progressive`), cross-entropy on the readout. The step's
  randomness comes from the optimizer's step (`tasks.STEP_KEY`), so a
  resumed run draws the same n.
- "implicit": the head solved (config.solve) and differentiated by its
  backward mode.

A feed-forward model trains directly. Periodic validation solves a few
instances at the training size and at the largest test size; after training
(and in `python -m attractor_jax.evaluate`) every test size is solved to the
tolerance with max_iter growing with the size, and the budget curve is
measured at `config.evaluation.budget_sizes`
(workdir/eval/extrapolation.json and .md).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from attractor_jax import errors
from attractor_jax.configs import extrapolation as extrapolation_configs
from attractor_jax.models.reasoning import conv
from attractor_jax.parallel import distributed
from attractor_jax.tasks.extrapolation import evaluation
from attractor_jax.tasks.extrapolation import generators
from attractor_jax.training import config_checks
from attractor_jax.training import metrics as metrics_lib
from attractor_jax.training import tasks
from attractor_jax.training import workdir as workdir_lib

MODES = ("progressive", "implicit")


def model_config_from(config: ml_collections.ConfigDict):
  """The conv model config.model.kind names, shaped for the problem, with
  every set config.model.* and (for the reasoner) config.solve.*."""
  kind = config.model.get("kind")
  if kind not in conv.CONFIGS:
    raise errors.ConfigError(
        f"config.model.kind {kind!r} is not an extrapolation model; "
        f"expected one of {', '.join(conv.CONFIGS)}.")
  cls = conv.CONFIGS[kind]
  problem = _check_problem(config.data.problem)
  fields = {k: v for k, v in config.model.to_dict().items()
            if v is not None and k != "kind"}
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise errors.ConfigError(
        f"config.model field(s) {unknown} do not apply to a {kind!r} model; "
        "leave them unset.")
  fields.update(ndim=generators.ndim(problem),
                in_channels=generators.in_channels(problem))
  if "solve" in known:
    solve = {k: v for k, v in config.get("solve", {}).items()
             if v is not None}
    try:
      fields["solve"] = dataclasses.replace(conv.DEFAULT_SOLVE, **solve)
    except TypeError as error:
      raise errors.ConfigError(f"config.solve: {error}") from error
  try:
    return cls(**fields)
  except (TypeError, ValueError) as error:
    raise errors.ConfigError(f"config.model: {error}") from error


def _check_problem(problem: Any) -> str:
  if problem not in generators.PROBLEMS:
    raise errors.ConfigError(
        f"Unknown config.data.problem {problem!r}; expected one of "
        f"{', '.join(generators.PROBLEMS)}.")
  return problem


def _check_sizes(name: str, sizes: Any, least: int) -> tuple[int, ...]:
  sizes = sizes if isinstance(sizes, (tuple, list)) else (sizes,)
  if not sizes or not all(isinstance(s, int) and not isinstance(s, bool)
                          and s >= least for s in sizes):
    raise errors.ConfigError(
        f"config.{name} must be integers >= {least}; got {sizes!r}.\n"
        f"Pass --config.{name}='(A,B,...)'.")
  return tuple(int(s) for s in sizes)


def _max_iter(config, size: int) -> int:
  """The test-time solve's iteration limit at `size`."""
  return int(config.evaluation.max_iter_base
             + config.evaluation.max_iter_per_size * size)


class StepAux(NamedTuple):
  """What one training step reports."""

  xent: jax.Array
  exact: jax.Array          # [batch] bool
  position_accuracy: jax.Array
  stats: Any


@dataclasses.dataclass(frozen=True)
class ExtrapolationData:
  """The training stream and the sets evaluation solves."""

  train: generators.TrainStream
  validation: dict            # size -> Examples
  max_iter: dict              # size -> the solve's max_iter there
  eval_batch_size: int


@dataclasses.dataclass(frozen=True)
class ExtrapolationTask(tasks.Task):
  """Prefix sums or mazes, trained small and tested large
  (configs/extrapolation.py).

  Attributes:
    problem: "prefix_sums" or "mazes".
    mode: "progressive" or "implicit" (the reasoner's training).
    max_warm, steps: progressive training's warm-start range and graded
      applications.
    seed: seeds the progressive draws (with the step).
  """

  name: str = "extrapolation"
  progress_keys = ("loss", "exact_accuracy")
  progress_unit = "ex"
  evaluate_options = ("test_sizes", "max_iter")
  problem: str = "prefix_sums"
  mode: str = "progressive"
  max_warm: int = 30
  steps: int = 10
  seed: int = 0

  @classmethod
  def from_config(cls, config):
    extrapolation_configs.check_fields(config)
    return cls(problem=config.data.problem, mode=config.training.mode,
               max_warm=config.training.max_warm,
               steps=config.training.steps, seed=int(config.seed))

  # ----------------------------------------------------------- config, data

  def validate_config(self, config, workdir=None, *, num_devices=None):
    extrapolation_configs.check_fields(config)
    for name in ("batch_size", "total_steps", "log_every", "eval_every",
                 "eval_batch_size", "checkpoint_every", "keep_checkpoints",
                 "eval_examples", "test_examples", "training.max_warm",
                 "training.steps", "evaluation.max_iter_base"):
      config_checks.check_integer(config, name, 1)
    config_checks.check_integer(config, "seed", 0)
    config_checks.check_integer(config, "evaluation.max_iter_per_size", 0)
    config_checks.check_integer(config, "divergence.max_consecutive_bad_steps",
                                0)
    config_checks.check_number(config, "divergence.max_loss_factor", low=0)
    if config.training.mode not in MODES:
      raise errors.ConfigError(
          f"Unknown config.training.mode {config.training.mode!r}; expected "
          f"one of {', '.join(MODES)}.")
    least = 2 if _check_problem(config.data.problem) == "mazes" else 1
    _check_sizes("data.train_size", config.data.train_size, least)
    _check_sizes("data.test_sizes", config.data.test_sizes, least)
    if config.evaluation.budgets:
      _check_sizes("evaluation.budgets", config.evaluation.budgets, 1)
    if config.evaluation.budget_sizes:
      _check_sizes("evaluation.budget_sizes", config.evaluation.budget_sizes,
                   least)
    model_config = model_config_from(config)
    config_checks.check_optimizer(config)
    config_checks.check_mesh(config, num_devices)
    if workdir is not None:
      workdir_lib.check_workdir_model(workdir, model_config,
                                      model_config_from)
    return model_config

  def prepare_data(self, config, workdir) -> ExtrapolationData:
    del workdir
    sizes = (config.data.train_size, max(config.data.test_sizes))
    return ExtrapolationData(
        train=generators.TrainStream(
            self.problem, config.data.train_size,
            config.batch_size // jax.process_count(),
            config.seed * jax.process_count() + jax.process_index()),
        validation={size: generators.test_set(self.problem, size,
                                              config.eval_examples)
                    for size in dict.fromkeys(sizes)},
        max_iter={size: _max_iter(config, size) for size in sizes},
        eval_batch_size=config.eval_batch_size)

  def model_config(self, config, data):
    del data
    return model_config_from(config)

  def inference_setup(self, config, workdir):
    del workdir
    return model_config_from(config), None

  # --------------------------------------------------------------- training

  def loss(self, model, batch):
    inputs, targets = batch["inputs"], batch["targets"]
    stats = None
    if not hasattr(model, "head"):
      logits, _ = model(inputs)
    elif self.mode == "implicit":
      logits, stats = model(inputs)
    else:
      key = jax.random.fold_in(jax.random.key(self.seed),
                               batch[tasks.STEP_KEY])
      logits = model.progressive(inputs, key=key, max_warm=self.max_warm,
                                 steps=self.steps)
    logits = logits.astype(jnp.float32)
    xent = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, targets))
    right = jnp.argmax(logits, axis=-1) == targets
    exact = jnp.all(right.reshape(right.shape[0], -1), axis=1)
    return xent, StepAux(xent=xent, exact=exact,
                         position_accuracy=jnp.mean(right.astype(jnp.float32)),
                         stats=stats)

  def step_scalars(self, aux) -> dict[str, jax.Array]:
    scalars = {"loss": aux.xent,
               "exact_accuracy": jnp.mean(aux.exact.astype(jnp.float32)),
               "position_accuracy": aux.position_accuracy}
    scalars.update(metrics_lib.summarize_solver_stats(aux.stats))
    return scalars

  # ------------------------------------------------------------- evaluation

  def evaluate(self, model, data: ExtrapolationData) -> dict[str, float]:
    """A few test instances at the training size and the largest test size,
    solved as the final evaluation solves them."""
    validation = {}
    for size, examples in data.validation.items():
      result = evaluation.evaluate(model, examples,
                                   max_iter=data.max_iter[size],
                                   batch_size=data.eval_batch_size)
      for key in ("exact_accuracy", "converged_fraction", "iterations_mean"):
        if key in result:
          validation[f"size_{size}/{key}"] = result[key]
    return validation

  def describe_validation(self, step, validation) -> str:
    parts = []
    for key, value in validation.items():
      if key.endswith("/exact_accuracy"):
        size = key.split("/")[0][len("size_"):]
        parts.append(f"size {size} {100 * value:.1f}%")
    return f"step {step}: validation exact accuracy " + ", ".join(parts)

  def _test(self, config, workdir, model, step, sizes=None, max_iter=None):
    sizes = tuple(sizes or config.data.test_sizes)
    budget_sizes = set(config.evaluation.budget_sizes or ())
    results = {}
    for size in sizes:
      limit = max_iter or _max_iter(config, size)
      has_head = hasattr(model, "head")
      examples = generators.test_set(self.problem, size,
                                     config.test_examples)
      row = evaluation.evaluate(model, examples,
                                max_iter=limit if has_head else None,
                                batch_size=config.eval_batch_size)
      if has_head:
        row["max_iter"] = limit
      if size in budget_sizes:
        row.update(evaluation.budget_curve(
            model, examples, config.evaluation.budgets,
            batch_size=config.eval_batch_size))
      results[str(size)] = row
    extra = {"step": step, "problem": self.problem,
             "train_size": config.data.train_size,
             "model": model.config.kind, "mode": self.mode}
    wrote = ""
    if distributed.is_main_process():
      paths = evaluation.write_results(results, os.path.join(workdir, "eval"),
                                       extra=extra)
      wrote = "\nwrote " + ", ".join(paths)
    print(f"\n{self.problem} trained at {config.data.train_size}, step "
          f"{step}:\n" + evaluation.format_table(results) + wrote, flush=True)
    return results

  def finish(self, config, workdir, model, data) -> dict[str, Any]:
    """Every test size, solved to the tolerance."""
    del data
    return {"test": self._test(config, workdir, model, config.total_steps)}

  def evaluate_workdir(self, config, workdir, trained, assets, *,
                       eval_batches: Optional[int] = None,
                       test_sizes: Optional[tuple[int, ...]] = None,
                       max_iter: Optional[int] = None):
    """The test sets at `test_sizes` (default the config's), solved with at
    most `max_iter` iterations at every size (default: growing with the
    size, as in training's final evaluation)."""
    del assets
    if eval_batches is not None:
      raise errors.ConfigError(
          "--eval_batches does not apply to extrapolation: evaluation solves "
          "config.test_examples instances per size.\nLeave --eval_batches "
          "out; pick sizes with --test_sizes.")
    least = 2 if self.problem == "mazes" else 1
    if test_sizes is not None:
      test_sizes = _check_sizes("data.test_sizes (--test_sizes)", test_sizes,
                                least)
    if max_iter is not None and max_iter < 1:
      raise errors.ConfigError(f"--max_iter must be >= 1; got {max_iter}.")
    return {"test": self._test(config, workdir, trained.model, trained.step,
                               test_sizes, max_iter)}
