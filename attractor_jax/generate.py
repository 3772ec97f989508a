"""Samples from a trained run: `python -m attractor_jax.generate --workdir=DIR
--prompt="ROMEO:"`.

Decoding uses key/value caches for the backbone and the attractor head (each
new position is solved alone against the cached fixed point); --nocached
re-solves the whole prefix per token instead.

--top_k=K samples among the K most likely tokens; --top_k=-1 samples from
the whole vocabulary (0 is refused: it would keep no token). --temperature=0
decodes greedily. The prompt and the sampled tokens together must fit in the
context the model was trained on (the run's data.seq_len). A bad input prints
`error: ...` and what to do and exits with status 2 (docs/bad_inputs.md).
"""

from absl import flags
from etils import epath
import ml_collections

from attractor_jax import commands
from attractor_jax import data as data_lib
from attractor_jax import errors
from attractor_jax.parallel import distributed
from attractor_jax.tasks.lm import task as lm_task
from attractor_jax.training import trainer
from attractor_jax.training import workdir as workdir_lib

NO_TOP_K = -1

distributed.define_flags()    # --coordinator_address, --num_processes, ...

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.",
                               required=True)
_PROMPT = flags.DEFINE_string("prompt", "ROMEO:", "Text to continue.")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 64, "Tokens to sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 is greedy.")
_TOP_K = flags.DEFINE_integer(
    "top_k", 40, "Sample among the k most likely; -1 for the whole "
    "vocabulary.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_CACHED = flags.DEFINE_bool("cached", True, "Use key/value caches.")


def check_flags(*, prompt: str, num_tokens: int, temperature: float,
                top_k: int, step) -> None:
  """The checks that need no workdir.

  Raises:
    errors.ConfigError: naming the flag and what to pass instead.
  """
  if not prompt:
    raise errors.ConfigError(
        "--prompt is empty.\nPass --prompt=TEXT, the text to continue.")
  if num_tokens < 1:
    raise errors.ConfigError(
        f"--num_tokens={num_tokens} samples nothing.\nPass --num_tokens=N "
        "with N >= 1.")
  if not temperature >= 0:
    raise errors.ConfigError(
        f"--temperature={temperature} is negative.\nPass --temperature=0 for "
        "greedy decoding, or a positive temperature to sample.")
  if top_k == 0 or top_k < NO_TOP_K:
    raise errors.ConfigError(
        f"--top_k={top_k} keeps no token to sample from.\nPass --top_k=K "
        "with K >= 1, or --top_k=-1 to sample from the whole vocabulary.")
  workdir_lib.check_step_flag(step)


def check_fits(prompt_tokens: int, num_tokens: int, top_k: int,
               config: ml_collections.ConfigDict) -> None:
  """The checks against the run: context length and vocabulary size.

  Raises:
    errors.ConfigError: naming the flag and the largest value that fits.
  """
  context = config.data.seq_len
  if prompt_tokens + num_tokens > context:
    room = context - prompt_tokens
    fix = (f"Pass --num_tokens={room} or less, or a shorter prompt."
           if room >= 1 else "Pass a shorter prompt.")
    raise errors.ConfigError(
        f"The prompt ({prompt_tokens} tokens) and --num_tokens={num_tokens} "
        f"need {prompt_tokens + num_tokens} positions, more than the "
        f"{context} the model was trained on.\n{fix}")
  vocab_size = config.data.vocab_size
  if top_k > vocab_size:
    raise errors.ConfigError(
        f"--top_k={top_k} exceeds the vocabulary of {vocab_size} tokens.\n"
        f"Pass --top_k={vocab_size} or less, or --top_k=-1 for all of them.")


def main(argv):
  commands.start_command(argv)
  workdir = _WORKDIR.value
  check_flags(prompt=_PROMPT.value, num_tokens=_NUM_TOKENS.value,
              temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
              step=_STEP.value)
  config = workdir_lib.load_config(workdir)
  tokenizer = data_lib.load_tokenizer(epath.Path(workdir) / "tokenizer.model")
  check_fits(len(tokenizer.encode(_PROMPT.value)), _NUM_TOKENS.value,
             _TOP_K.value, config)
  workdir_lib.check_checkpoint_exists(workdir, _STEP.value)
  state, tokenizer, _ = trainer.load_trained(workdir, _STEP.value)
  sample = ml_collections.ConfigDict(dict(
      prompt=_PROMPT.value, num_tokens=_NUM_TOKENS.value,
      temperature=_TEMPERATURE.value,
      # lm_task.sample_text reads a top_k of 0 as "no top-k".
      top_k=0 if _TOP_K.value == NO_TOP_K else _TOP_K.value))
  print(lm_task.sample_text(state.model, tokenizer, sample, seed=_SEED.value,
                            cached=_CACHED.value,
                            trained_context=config.data.seq_len))


if __name__ == "__main__":
  commands.run(main)
