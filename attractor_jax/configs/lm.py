"""Language-model training on a text corpus.

The embedded default (no --config) trains a tiny Attractor LM on the built-in
Shakespeare corpus in a few minutes on 2 CPU cores, then evaluates it and
prints a sample:

  python -m attractor_jax.train --workdir=/tmp/attractor_tiny

Any preset of attractor_jax/models/presets.py is a variant, and every field
can be overridden on the command line:

  python -m attractor_jax.train --workdir=/tmp/run \
      --config=attractor_jax/configs/lm.py:attractor-140m \
      --config.data.source=text --config.data.path=/data/corpus \
      --config.model.dim=512 --config.solve.max_iter=16 \
      --config.optimizer.lr=3e-4
"""

import dataclasses
import difflib
import typing

import ml_collections
from ml_collections import config_dict

from attractor_jax import errors
from attractor_jax.models import presets
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn.attractor_head import SolveConfig

TINY = "tiny"
# Held-out last words scored after training (also for a saved config from
# before the field existed, which `evaluate` reads).
LAST_WORD_EXAMPLES = 2000


def placeholders(cls, skip=()) -> ml_collections.ConfigDict:
  """One None-valued, typed field per dataclass field: overridable, unset."""
  hints = typing.get_type_hints(cls)
  fields = {}
  for field in dataclasses.fields(cls):
    if field.name in skip:
      continue
    hint = hints[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    field_type = args[0] if args else hint
    if field_type not in (int, float, str, bool):
      continue
    fields[field.name] = config_dict.placeholder(field_type)
  return ml_collections.ConfigDict(fields)


def check_variant(variant: str) -> str:
  """`variant` normalised; ConfigError unless it is `tiny` or a preset name."""
  known = [TINY] + presets.list_presets()
  if variant.strip().lower() in known:
    return variant.strip().lower()
  close = difflib.get_close_matches(variant, known, n=1, cutoff=0.6)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise errors.ConfigError(
      f"Unknown config variant {variant!r}.{hint} Use "
      f"--config=attractor_jax/configs/lm.py:VARIANT with one of: "
      f"{', '.join(known)}.")


def get_config(variant: str = TINY) -> ml_collections.ConfigDict:
  """`tiny` (the embedded default) or a preset name such as attractor-140m.

  Raises:
    errors.ConfigError: an unknown variant (before anything is built).
  """
  variant = check_variant(variant)
  tiny = variant == TINY
  config = ml_collections.ConfigDict()
  config.task = "lm"                  # see attractor_jax/training/tasks.py
  config.model = placeholders(ModelConfig, skip=("kind",))
  config.model.preset = "attractor-tiny" if tiny else variant
  config.solve = placeholders(SolveConfig)
  if not tiny:
    # Accelerator precision: bfloat16 compute; float32 parameters, optimizer
    # state and solved blocks, which bfloat16 rounding would keep above the
    # presets' tolerances (docs/precision.md).
    config.model.dtype = "bfloat16"
    config.model.head_dtype = "float32"

  config.data = ml_collections.ConfigDict(dict(
      source="builtin",          # builtin | text | array_record | tfds
      path="",                   # text file/folder, or ArrayRecord file(s)
      tfds_name="", tfds_split="train", tfds_data_dir="", text_key="text",
      vocab_size=1024 if tiny else 32768,
      tokenizer_model="",        # a SentencePiece file; "" trains one
      seq_len=128 if tiny else 2048,
      validation_fraction=0.05,
  ))

  config.seed = 0
  config.batch_size = 16 if tiny else 256
  config.total_steps = 300 if tiny else 100_000
  config.log_every = 25 if tiny else 100
  config.eval_every = 150 if tiny else 2000
  # Validation batches: 0 is the whole validation split (the last batch
  # padded, no row dropped); the presets' corpora are big, so they cap it.
  config.eval_batches = 0 if tiny else 50
  config.checkpoint_every = 100 if tiny else 1000
  config.keep_checkpoints = 2 if tiny else 3
  config.depth_sweep = True
  # After training: held-out last-word accuracy and perplexity (LAMBADA-
  # style, tasks/lm/last_word.py) over at most this many words; 0: none.
  config.last_word_examples = LAST_WORD_EXAMPLES
  # A bad step (NaN loss or gradients, a failed forward solve, a loss past
  # max_loss_factor * ln(vocab_size)) is skipped; this many in a row stop
  # the run (0: never stop).
  config.divergence = ml_collections.ConfigDict(dict(
      max_consecutive_bad_steps=20, max_loss_factor=3.0))

  # The paper's recipe for the presets (docs/design.md section 2): Muon for
  # backbone matrices, AdamW (betas 0.8 / 0.95, eps 1e-10) for the rest, the
  # head at lr * fp_lr_scale with its own weight decay. Muon's updates are
  # scaled to RMS 0.2 x lr, what AdamW's reach (arXiv 2502.16982), so one lr
  # serves both; with optax's default scaling they were 30x smaller.
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw" if tiny else "muon",
      lr=3e-3 if tiny else 3e-4,
      schedule="trapezoid",
      warmup_steps=20 if tiny else 1000,
      decay_fraction=0.5,
      b1=0.9 if tiny else 0.8,
      b2=0.95,
      eps=1e-8 if tiny else 1e-10,
      weight_decay=0.0 if tiny else 0.1,
      fp_wd=0.0 if tiny else 0.1,
      fp_lr_scale=1.0 if tiny else 0.75,
      muon_consistent_rms=config_dict.placeholder(float) if tiny else 0.2,
      clip_norm=1.0,
  ))
  # Within a slice (ICI): data x fsdp x tensor; dcn_data: data parallelism
  # across slices or processes (docs/launching.md).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                               dcn_data=1))
  config.sample = ml_collections.ConfigDict(dict(
      prompt="ROMEO:", num_tokens=48 if tiny else 128, temperature=0.8,
      top_k=40))
  return config
