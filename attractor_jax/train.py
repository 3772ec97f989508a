"""Trains a language model: `python -m attractor_jax.train --workdir=DIR`.

Without --config it runs the embedded default (attractor_jax/configs/lm.py:
a tiny Attractor LM on the built-in Shakespeare corpus, a few minutes on a
CPU). Pick another with --config=attractor_jax/configs/lm.py:VARIANT and
override any field with --config.FIELD=VALUE. A workdir that holds
checkpoints is resumed.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from attractor_jax import configs
from attractor_jax.training import experiment
from attractor_jax.training import trainer

_DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "lm.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Training config file[:variant].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", "workdir/attractor-tiny",
    "Directory for checkpoints, tokenizer, metrics and evaluation.")


def main(argv):
  experiment.start_command(argv)
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
