"""Evaluates a trained run: `python -m attractor_jax.evaluate --workdir=DIR`.

The run's task decides what is measured on the latest (or --step) checkpoint.
Language models: validation loss and perplexity, and the test-time depth
sweep T = 0, 1, 2, 4, ..., max_iter written to DIR/eval/ (depth_sweep.txt,
.json and .png; T = 0 decodes the backbone's proposal c). Puzzles: the whole
test set, every puzzle run for the maximum number of segments, exact-puzzle
accuracy, cell accuracies and the difficulty tiers, written to
DIR/eval/puzzle_eval.json (docs/puzzle_training.md). Extrapolation
(configs/extrapolation.py): exact accuracy, converged fraction and
iterations at every test size (--test_sizes, default the config's), solved
with at most --max_iter iterations (default: growing with the size), written
to DIR/eval/extrapolation.json and .md.

A bad input (not a training workdir, a step with no checkpoint, a corpus that
moved) prints `error: ...` and what to do, exits with status 2 and writes
nothing (docs/bad_inputs.md).
"""


from absl import flags

from attractor_jax import commands
from attractor_jax import errors
from attractor_jax.parallel import distributed
from attractor_jax.training import tasks
from attractor_jax.training import trainer
from attractor_jax.training import workdir as workdir_lib

distributed.define_flags()    # --coordinator_address, --num_processes, ...

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_BATCHES = flags.DEFINE_integer("eval_batches", None,
                                "Validation batches (default: the config's).")
_TEST_SIZES = flags.DEFINE_list(
    "test_sizes", None, "Extrapolation: test sizes, e.g. 32,128,512 "
    "(default: the config's).")
_MAX_ITER = flags.DEFINE_integer(
    "max_iter", None, "Extrapolation: the solver's iteration budget at every "
    "size (default: growing with the size).")


def check_flags(step, eval_batches) -> None:
  """Raises ConfigError for a negative --step or --eval_batches below 1."""
  workdir_lib.check_step_flag(step)
  if eval_batches is not None and eval_batches < 1:
    raise errors.ConfigError(
        f"--eval_batches={eval_batches} evaluates nothing.\nPass "
        "--eval_batches=N with N >= 1, or leave it out for the config's.")


def task_options(task, test_sizes, max_iter) -> dict:
  """The task-specific flags that were given, as `evaluate_workdir`
  keyword arguments; ConfigError for one the run's task does not take."""
  options = {}
  if test_sizes is not None:
    try:
      options["test_sizes"] = tuple(int(size) for size in test_sizes)
    except ValueError as error:
      raise errors.ConfigError(
          f"--test_sizes={','.join(test_sizes)} must be integers, e.g. "
          "--test_sizes=32,128.") from error
  if max_iter is not None:
    options["max_iter"] = max_iter
  for name in options:
    if name not in task.evaluate_options:
      raise errors.ConfigError(
          f"--{name} does not apply to a {task.name!r} run.\nLeave it out.")
  return options


def main(argv):
  commands.start_command(argv)
  workdir = _WORKDIR.value
  check_flags(_STEP.value, _BATCHES.value)
  config = workdir_lib.load_config(workdir)
  task = tasks.get_task(config)
  options = task_options(task, _TEST_SIZES.value, _MAX_ITER.value)
  workdir_lib.check_checkpoint_exists(workdir, _STEP.value)
  trained, assets, config = trainer.load_trained(workdir, _STEP.value)
  task.evaluate_workdir(config, workdir, trained, assets,
                        eval_batches=_BATCHES.value, **options)


if __name__ == "__main__":
  commands.run(main)
