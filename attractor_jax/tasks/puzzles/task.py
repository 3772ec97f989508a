"""Puzzle solving (Sudoku-Extreme, Maze-Hard) as a `tasks.Task`.

Deep supervision the way TRM trains it. The training batch is a set of
`batch_size` slots, each holding one puzzle and its carry (answer y and
reasoning state z) across steps. Every optimizer step runs one segment for
every slot:

1. slots that halted on the previous step take the next batch's puzzle at
   their position and restart their carry (`model.reset_carry`);
2. one segment: logits and the halting logit q_halt;
3. loss = mean stablemax cross-entropy over cells
          + halt_loss_weight * BCE(q_halt, "the whole answer is right")
          + the model's auxiliary loss (the reasoner's Jacobian penalty);
4. the carry is detached and kept; a slot halts after `max_segments`
   segments, or when q_halt > 0, except that with probability
   `exploration_prob` it must first reach a random 2..max_segments
   segments (TRM's exploration). A skipped (bad) step restarts every slot.

The slots' carry, puzzles and counters are the task's carried state
(`tasks.TaskState`), checkpointed with the model, so a resumed run continues
exactly. Evaluation is `evaluation`: deterministic, every test puzzle, the
maximum number of segments.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attractor_jax import errors
from attractor_jax.configs import puzzle as puzzle_configs
from attractor_jax.models import lm_common
from attractor_jax.models import reasoning
from attractor_jax.parallel import distributed
from attractor_jax.tasks.puzzles import data as puzzle_data
from attractor_jax.tasks.puzzles import evaluation as puzzle_eval
from attractor_jax.training import config_checks
from attractor_jax.training import metrics as metrics_lib
from attractor_jax.training import tasks
from attractor_jax.training import workdir as workdir_lib


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array
                            ) -> jax.Array:
  """-log stablemax(logits)[label] per position, in float32.

  stablemax replaces exp by s(x) = x + 1 for x >= 0 and 1 / (1 - x) below
  (arXiv 2501.04697, used by TRM), which keeps probabilities from saturating
  on small data sets.
  """
  x = logits.astype(jnp.float32)
  s = jnp.where(x >= 0, jnp.maximum(x, 0) + 1, 1 / (1 - jnp.minimum(x, 0)))
  log_p = jnp.log(s) - jnp.log(jnp.sum(s, axis=-1, keepdims=True))
  return -lm_common.pick_last_axis(log_p, labels)


class PuzzleStepAux(NamedTuple):
  """What one training segment hands to `next_state` and `step_scalars`."""

  state: dict            # the slots after the segment, before halting
  q_halt: jax.Array      # [batch]
  exact: jax.Array       # [batch] bool
  cell_accuracy: jax.Array
  xent: jax.Array
  halt_loss: jax.Array
  aux_loss: jax.Array
  stats: Any


@dataclasses.dataclass(frozen=True)
class PuzzleData:
  """Training stream, the whole test split and the periodic-eval subset."""

  train: puzzle_data.TrainStream
  test: puzzle_data.PuzzleSet
  validation: puzzle_data.PuzzleSet
  eval_batch_size: int


def model_config_from(config: ml_collections.ConfigDict):
  """The preset config.model.preset, shaped for config.data.puzzle, with
  every set config.model.* and (for kinds with a solver) config.solve.*."""
  fields = {k: v for k, v in config.model.to_dict().items() if v is not None}
  name = fields.pop("preset", None)
  if not name:
    raise errors.ConfigError(
        "config.model.preset is not set.\nPass --config.model.preset=NAME "
        f"with one of: {', '.join(reasoning.presets.list_presets())}.")
  model_config = reasoning.presets.get_preset(
      name, puzzle_data.check_puzzle(config.data.puzzle))
  known = {f.name for f in dataclasses.fields(model_config)} - {"kind"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise errors.ConfigError(
        f"Unknown model field(s) {unknown} for {type(model_config).__name__}"
        f"; it has {sorted(known)}.")
  solve = {k: v for k, v in config.get("solve", {}).items() if v is not None}
  if solve:
    if "solve" not in known:
      raise errors.ConfigError(
          f"config.solve.* {sorted(solve)} set, but {name} has no solver.\n"
          "Leave config.solve alone, or pick an attractor-reasoner preset.")
    try:
      fields["solve"] = dataclasses.replace(model_config.solve, **solve)
    except TypeError as error:
      raise errors.ConfigError(f"config.solve: {error}") from error
  try:
    return model_config.replace(**fields)
  except (TypeError, ValueError) as error:
    raise errors.ConfigError(f"config.model: {error}") from error


@dataclasses.dataclass(frozen=True)
class PuzzleTask(tasks.Task):
  """Sudoku or Maze with TRM's deep supervision (configs/sudoku.py, maze.py).

  Attributes:
    puzzle: "sudoku" or "maze".
    max_segments: the model's segments per puzzle.
    exploration_prob: chance that a slot must run a random minimum number of
      segments before it may halt (training only).
    halt_loss_weight: weight of the halting loss.
    seed: seeds the exploration draws.
  """

  name: str = "puzzle"
  progress_keys = ("loss", "cell_accuracy", "exact_accuracy")
  progress_unit = "seg"
  puzzle: str = "sudoku"
  max_segments: int = 16
  exploration_prob: float = 0.1
  halt_loss_weight: float = 0.5
  seed: int = 0

  @classmethod
  def from_config(cls, config):
    puzzle_configs.check_fields(config)    # a clear error, not AttributeError
    return cls(puzzle=config.data.puzzle,
               max_segments=model_config_from(config).max_segments,
               exploration_prob=float(config.halting.exploration_prob),
               halt_loss_weight=float(config.halting.loss_weight),
               seed=int(config.seed))

  # ----------------------------------------------------------- config, data

  def validate_config(self, config, workdir=None, *, num_devices=None):
    puzzle_configs.check_fields(config)
    for name in ("batch_size", "total_steps", "log_every", "eval_every",
                 "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
      config_checks.check_integer(config, name, 1)
    config_checks.check_integer(config, "seed", -2**63)
    config_checks.check_integer(config, "eval_examples", 0)
    config_checks.check_integer(config, "test_examples", 0)
    config_checks.check_integer(config, "divergence.max_consecutive_bad_steps",
                             0)
    config_checks.check_number(config, "divergence.max_loss_factor", low=0)
    config_checks.check_number(config, "halting.exploration_prob", 0, 1)
    config_checks.check_number(config, "halting.loss_weight", low=0)
    if not isinstance(config.data.augment, bool):
      raise errors.ConfigError(
          f"config.data.augment must be True or False; got "
          f"{config.data.augment!r}.")
    model_config = model_config_from(config)
    config_checks.check_optimizer(config)
    # Over several processes evaluation splits its batches like training's
    # (one process evaluates whole batches, replicated).
    batches = ("batch_size",) + (("eval_batch_size",)
                                 if jax.process_count() > 1 else ())
    config_checks.check_mesh(config, num_devices, batch_fields=batches)
    if workdir is not None:
      workdir_lib.check_workdir_model(workdir, model_config,
                                     model_config_from)
    return model_config

  def prepare_data(self, config, workdir) -> PuzzleData:
    del workdir
    train = puzzle_data.load(self.puzzle, "train")
    test = _test_split(self.puzzle, config)
    return PuzzleData(
        train=puzzle_data.TrainStream(
            train, config.batch_size // jax.process_count(), config.seed,
            augment=config.data.augment, shard_index=jax.process_index(),
            shard_count=jax.process_count()),
        test=test, validation=test.spread(config.eval_examples or None),
        eval_batch_size=config.eval_batch_size)

  def model_config(self, config, data):
    del data
    return model_config_from(config)

  def inference_setup(self, config, workdir):
    del workdir
    return model_config_from(config), None

  # --------------------------------------------------------------- training

  def initial_state(self, config, model_config) -> dict[str, np.ndarray]:
    """Every slot starts halted, so the first step loads a whole batch.

    These are this process's slots (its share of the global batch).
    """
    batch = config.batch_size // jax.process_count()
    seq_len = model_config.seq_len
    latent = (batch, model_config.total_len, model_config.dim)
    dtype = model_config.jnp_dtype
    return {"y": jnp.zeros(latent, dtype), "z": jnp.zeros(latent, dtype),
            "inputs": np.zeros((batch, seq_len), np.int32),
            "labels": np.zeros((batch, seq_len), np.int32),
            "steps": np.zeros((batch,), np.int32),
            "halted": np.ones((batch,), bool)}

  def loss(self, model, batch):
    slots = batch[tasks.STATE_KEY]
    halted = slots["halted"]
    carry = model.reset_carry(reasoning.ReasonerCarry(slots["y"], slots["z"]),
                              halted)
    inputs = jnp.where(halted[:, None], batch["inputs"], slots["inputs"])
    labels = jnp.where(halted[:, None], batch["labels"], slots["labels"])
    carry, out = model(inputs, carry, train=True)
    xent = jnp.mean(stablemax_cross_entropy(out.logits, labels))
    correct = jnp.argmax(out.logits, axis=-1) == labels
    exact = jnp.all(correct, axis=-1)
    halt_loss = jnp.zeros((), jnp.float32)
    # A model without a halting head (the transformer: one segment, a
    # constant "halt" logit) has nothing to learn there.
    if model.config.supports(reasoning.HALTING):
      halt_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(
          out.q_halt, exact.astype(jnp.float32)))
    loss = xent + self.halt_loss_weight * halt_loss + out.aux_loss
    carry = reasoning.detach(carry)
    state = dict(y=carry.y.astype(slots["y"].dtype),
                 z=carry.z.astype(slots["z"].dtype), inputs=inputs,
                 labels=labels, steps=jnp.where(halted, 0, slots["steps"]) + 1)
    return loss, PuzzleStepAux(
        state=state, q_halt=jax.lax.stop_gradient(out.q_halt), exact=exact,
        cell_accuracy=jnp.mean(correct.astype(jnp.float32)), xent=xent,
        halt_loss=halt_loss, aux_loss=out.aux_loss, stats=out.stats)

  def next_state(self, batch, aux, bad, step):
    del batch
    state = dict(aux.state)
    steps = state["steps"]
    halted = steps >= self.max_segments
    if self.max_segments > 1:
      key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
      explore_key, length_key = jax.random.split(key)
      size = steps.shape
      explore = jax.random.uniform(explore_key, size) < self.exploration_prob
      min_steps = jnp.where(explore, jax.random.randint(
          length_key, size, 2, self.max_segments + 1), 0)
      halted = halted | ((aux.q_halt > 0) & (steps >= min_steps))
    state["halted"] = halted | bad
    return state

  def step_scalars(self, aux) -> dict[str, jax.Array]:
    scalars = {
        "loss": aux.xent + self.halt_loss_weight * aux.halt_loss
                + aux.aux_loss,
        "xent": aux.xent, "halt_loss": aux.halt_loss,
        "aux_loss": aux.aux_loss, "cell_accuracy": aux.cell_accuracy,
        "exact_accuracy": jnp.mean(aux.exact.astype(jnp.float32)),
        "halt_accuracy": jnp.mean(((aux.q_halt > 0) == aux.exact)
                                  .astype(jnp.float32)),
        "segment_mean": jnp.mean(aux.state["steps"].astype(jnp.float32)),
    }
    scalars.update(metrics_lib.summarize_solver_stats(aux.stats))
    return scalars

  def items_per_step(self, config) -> tuple[str, int]:
    return "segments", int(config.batch_size)

  # ------------------------------------------------------------- evaluation

  def evaluate(self, model, data: PuzzleData) -> dict[str, float]:
    """Periodic validation on config.eval_examples test puzzles spread over
    the split (all of them if 0); headline and tiers only."""
    result = puzzle_eval.evaluate(model, data.validation,
                                  batch_size=data.eval_batch_size)
    return {k: v for k, v in result.items() if not k.startswith("segment/")}

  def describe_validation(self, step, validation) -> str:
    return (f"step {step}: validation exact accuracy "
            f"{100 * validation['exact_accuracy']:.1f}%, blank cells "
            f"{100 * validation['blank_cell_accuracy']:.1f}% over "
            f"{int(validation['count'])} test puzzles")

  def _full_evaluation(self, model, test, workdir, step, batch_size):
    result = puzzle_eval.evaluate(model, test, batch_size=batch_size)
    wrote = ""
    if distributed.is_main_process():     # the workdir is shared
      path = puzzle_eval.write_results(
          result, os.path.join(workdir, "eval"),
          extra={"step": step, "puzzle": self.puzzle,
                 "model": model.config.kind})
      wrote = f"\nwrote {path}"
    print(f"\n{self.puzzle} test set, step {step}:\n"
          + puzzle_eval.format_table(result, test.tier_names) + wrote,
          flush=True)
    return result

  def finish(self, config, workdir, model, data) -> dict[str, Any]:
    """The whole test set, every puzzle for max_segments segments."""
    return {"test": self._full_evaluation(model, data.test, workdir,
                                          config.total_steps,
                                          data.eval_batch_size)}

  def evaluate_workdir(self, config, workdir, trained, assets, *,
                       eval_batches: Optional[int] = None):
    del assets
    if eval_batches is not None:
      raise errors.ConfigError(
          "--eval_batches does not apply to puzzles: evaluation covers "
          "config.test_examples test puzzles (0: all).\nLeave --eval_batches "
          "out, or set test_examples in the run's config.json.")
    test = _test_split(self.puzzle, config)
    return {"test": self._full_evaluation(trained.model, test, workdir,
                                          trained.step,
                                          config.eval_batch_size)}


def _test_split(puzzle: str, config) -> puzzle_data.PuzzleSet:
  """The test split the final evaluation reads: all of it, or
  config.test_examples puzzles spread over every tier (a saved config
  without the field reads all)."""
  return puzzle_data.load(puzzle, "test").spread(
      config.get("test_examples", 0) or None)
