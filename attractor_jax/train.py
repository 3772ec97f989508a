"""Trains a language model: `python -m attractor_jax.train --workdir=DIR`.

Without --config it runs the embedded default (attractor_jax/configs/lm.py:
a tiny Attractor LM on the built-in Shakespeare corpus, a few minutes on a
CPU). Pick another with --config=attractor_jax/configs/lm.py:VARIANT and
override any field with --config.FIELD=VALUE. A workdir that holds
checkpoints is resumed.

The whole config is checked before anything is written: a bad input prints
`error: ...` and what to do, and exits with status 2 (docs/bad_inputs.md).
"""

import os
import sys

from absl import flags

from attractor_jax import commands
from attractor_jax import configs
from attractor_jax.parallel import distributed
from attractor_jax.training import run_guards
from attractor_jax.training import trainer

distributed.define_flags()    # --coordinator_address, --num_processes, ...

_DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "lm.py")

_CONFIG = commands.define_config_file(
    "config", _DEFAULT_CONFIG, "Training config file[:variant].")
_WORKDIR = flags.DEFINE_string(
    "workdir", "workdir/attractor-tiny",
    "Directory for checkpoints, tokenizer, metrics and evaluation.")


def main(argv):
  commands.start_command(argv)
  summary = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if summary["preempted"]:
    sys.exit(run_guards.PREEMPTED_EXIT_CODE)    # docs/reliability.md


if __name__ == "__main__":
  commands.run(main)
