"""Evaluates a trained run: `python -m attractor_jax.evaluate --workdir=DIR`.

Validation loss and perplexity of the latest (or --step) checkpoint, and the
test-time depth sweep T = 0, 1, 2, 4, ..., max_iter written to DIR/eval/
(depth_sweep.txt, .json and .png). T = 0 decodes the backbone's proposal c.

A bad input (not a training workdir, a step with no checkpoint, a corpus that
moved) prints `error: ...` and what to do, exits with status 2 and writes
nothing (docs/bad_inputs.md).
"""

import os

from absl import flags

from attractor_jax import commands
from attractor_jax import errors
from attractor_jax.models import registry
from attractor_jax.training import evaluation
from attractor_jax.training import experiment
from attractor_jax.training import trainer

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_BATCHES = flags.DEFINE_integer("eval_batches", None,
                                "Validation batches (default: the config's).")


def check_flags(step, eval_batches) -> None:
  """Raises ConfigError for a negative --step or --eval_batches below 1."""
  experiment.check_step_flag(step)
  if eval_batches is not None and eval_batches < 1:
    raise errors.ConfigError(
        f"--eval_batches={eval_batches} evaluates nothing.\nPass "
        "--eval_batches=N with N >= 1, or leave it out for the config's.")


def main(argv):
  experiment.start_command(argv)
  workdir = _WORKDIR.value
  check_flags(_STEP.value, _BATCHES.value)
  config = experiment.load_config(workdir)
  experiment.validate_data(config, workdir)   # the corpus is still there
  experiment.check_checkpoint_exists(workdir, _STEP.value)
  state, tokenizer, config = trainer.load_trained(workdir, _STEP.value)
  if _BATCHES.value is not None:
    config.eval_batches = _BATCHES.value
  batches = experiment.prepare_validation(config, workdir, tokenizer)
  result = evaluation.evaluate(state.model, batches)
  print(f"step {state.step}: validation loss {result['loss']:.4f}, "
        f"perplexity {result['perplexity']:.2f} over {result['tokens']} "
        "tokens")
  if registry.supports(state.model.config.kind, registry.DEPTH_SWEEP):
    rows = evaluation.depth_sweep(state.model, batches)
    paths = evaluation.write_depth_sweep(rows, os.path.join(workdir, "eval"))
    print(evaluation.format_table(rows))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
  commands.run(main)
