"""Evaluates a trained run: `python -m attractor_jax.evaluate --workdir=DIR`.

The run's task decides what is measured on the latest (or --step) checkpoint.
Language models: validation loss and perplexity, and the test-time depth
sweep T = 0, 1, 2, 4, ..., max_iter written to DIR/eval/ (depth_sweep.txt,
.json and .png; T = 0 decodes the backbone's proposal c). Puzzles: the whole
test set, every puzzle run for the maximum number of segments, exact-puzzle
accuracy, cell accuracies and the difficulty tiers, written to
DIR/eval/puzzle_eval.json (docs/puzzle_training.md).

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


def check_flags(step, eval_batches) -> None:
  """Raises ConfigError for a negative --step or --eval_batches below 1."""
  workdir_lib.check_step_flag(step)
  if eval_batches is not None and eval_batches < 1:
    raise errors.ConfigError(
        f"--eval_batches={eval_batches} evaluates nothing.\nPass "
        "--eval_batches=N with N >= 1, or leave it out for the config's.")


def main(argv):
  commands.start_command(argv)
  workdir = _WORKDIR.value
  check_flags(_STEP.value, _BATCHES.value)
  config = workdir_lib.load_config(workdir)
  task = tasks.get_task(config)
  workdir_lib.check_checkpoint_exists(workdir, _STEP.value)
  trained, assets, config = trainer.load_trained(workdir, _STEP.value)
  task.evaluate_workdir(config, workdir, trained, assets,
                        eval_batches=_BATCHES.value)


if __name__ == "__main__":
  commands.run(main)
