"""Samples from a trained run: `python -m attractor_jax.generate --workdir=DIR
--prompt="ROMEO:"`.

Decoding uses key/value caches for the backbone and the attractor head (each
new position is solved alone against the cached fixed point); --nocached
re-solves the whole prefix per token instead.
"""

from absl import app
from absl import flags
import ml_collections

from attractor_jax.training import experiment
from attractor_jax.training import trainer

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_PROMPT = flags.DEFINE_string("prompt", "ROMEO:", "Text to continue.")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 64, "Tokens to sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 40, "Sample among the k most likely.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_CACHED = flags.DEFINE_bool("cached", True, "Use key/value caches.")


def main(argv):
  experiment.start_command(argv)
  state, tokenizer, _ = trainer.load_trained(_WORKDIR.value, _STEP.value)
  sample = ml_collections.ConfigDict(dict(
      prompt=_PROMPT.value, num_tokens=_NUM_TOKENS.value,
      temperature=_TEMPERATURE.value, top_k=_TOP_K.value))
  print(trainer.sample_text(state.model, tokenizer, sample, seed=_SEED.value,
                            cached=_CACHED.value))


if __name__ == "__main__":
  app.run(main)
