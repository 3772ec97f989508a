"""Evaluates a trained run: `python -m attractor_jax.evaluate --workdir=DIR`.

Validation loss and perplexity of the latest (or --step) checkpoint, and the
test-time depth sweep T = 0, 1, 2, 4, ..., max_iter written to DIR/eval/
(depth_sweep.txt, .json and .png). T = 0 decodes the backbone's proposal c.
"""

import os

from absl import app
from absl import flags

from attractor_jax.training import evaluation
from attractor_jax.training import experiment
from attractor_jax.training import trainer

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_BATCHES = flags.DEFINE_integer("eval_batches", None,
                                "Validation batches (default: the config's).")


def main(argv):
  experiment.start_command(argv)
  state, _, config = trainer.load_trained(_WORKDIR.value, _STEP.value)
  if _BATCHES.value:
    config.eval_batches = _BATCHES.value
  batches = experiment.prepare_validation(config, _WORKDIR.value)
  result = evaluation.evaluate(state.model, batches)
  print(f"step {state.step}: validation loss {result['loss']:.4f}, "
        f"perplexity {result['perplexity']:.2f} over {result['tokens']} "
        "tokens")
  if state.model.config.kind != "gpt":
    rows = evaluation.depth_sweep(state.model, batches)
    paths = evaluation.write_depth_sweep(rows,
                                         os.path.join(_WORKDIR.value, "eval"))
    print(evaluation.format_table(rows))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
  app.run(main)
