"""Puzzle training configs shared by configs/sudoku.py and configs/maze.py.

A variant is a size of the Attractor reasoner (`tiny`, `7m`, `27m`) or the
name of any puzzle-model preset (`trm-7m`, `transformer-tiny`, ...; see
attractor_jax/models/reasoning/presets.py). The paper-size variants follow
the recipe of docs/puzzle_training.md: AdamW at lr 1e-4, betas (0.9, 0.95),
weight decay 1.0, 2000 warm-up steps then constant, an EMA of the weights
(0.999) for evaluation, batch 768, bfloat16 activations. `tiny` variants are
CPU-sized: they train in minutes on 2 cores.
"""

from __future__ import annotations

import difflib

import ml_collections

from attractor_jax import configs
from attractor_jax import errors
from attractor_jax.configs.lm import placeholders
from attractor_jax.models.reasoning import config as reasoner_configs
from attractor_jax.models.reasoning import presets
from attractor_jax.nn.attractor_head import SolveConfig

SIZES = ("tiny", "7m", "27m")
DEFAULT_FAMILY = "attractor-reasoner"


def check_variant(variant: str, puzzle: str) -> str:
  """The preset a variant names; ConfigError for an unknown one."""
  key = variant.strip().lower()
  if key in SIZES:
    return f"{DEFAULT_FAMILY}-{key}"
  if key in presets.list_presets():
    return key
  known = list(SIZES) + presets.list_presets()
  close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise errors.ConfigError(
      f"Unknown config variant {variant!r}.{hint} Use "
      f"--config=attractor_jax/configs/{puzzle}.py:VARIANT with one of: "
      f"{', '.join(known)}.")


def _model_fields(preset: str) -> ml_collections.ConfigDict:
  """Typed, unset fields of every puzzle-model config class (overrides),
  so that --config.model.preset may switch to another kind."""
  fields = ml_collections.ConfigDict()
  for cls in (reasoner_configs.TRMConfig,
              reasoner_configs.AttractorReasonerConfig,
              reasoner_configs.TransformerReasonerConfig):
    for name, value in placeholders(cls, skip=("kind",)).items():
      if name not in fields:
        fields[name] = value
  fields.preset = preset
  return fields


def get_config(puzzle: str, variant: str) -> ml_collections.ConfigDict:
  """The training config of `puzzle` ("sudoku" or "maze") and `variant`."""
  preset = check_variant(variant, puzzle)
  tiny = preset.endswith("-tiny")
  config = ml_collections.ConfigDict()
  config.task = "puzzle"              # see attractor_jax/training/tasks.py
  config.model = _model_fields(preset)
  if not tiny:
    config.model.dtype = "bfloat16"
  config.solve = placeholders(SolveConfig)
  config.data = ml_collections.ConfigDict(dict(puzzle=puzzle, augment=True))
  config.halting = ml_collections.ConfigDict(dict(
      exploration_prob=0.1, loss_weight=0.5))

  config.seed = 0
  config.batch_size = 64 if tiny else 768
  config.total_steps = 3000 if tiny else 60_000
  config.log_every = 50 if tiny else 100
  config.eval_every = 1000 if tiny else 5000
  # Periodic validation reads eval_examples test puzzles spread over every
  # tier (0: all); the evaluation after training and `evaluate` read
  # test_examples of them (0: the whole test split, as results should).
  config.eval_examples = 500 if tiny else 0
  config.test_examples = 0
  config.eval_batch_size = 500 if tiny else 1000
  config.checkpoint_every = 500 if tiny else 1000
  config.keep_checkpoints = 2 if tiny else 3
  config.divergence = ml_collections.ConfigDict(dict(
      max_consecutive_bad_steps=20, max_loss_factor=3.0))
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3 if tiny else 1e-4, schedule="constant",
      warmup_steps=100 if tiny else 2000, b1=0.9, b2=0.95,
      weight_decay=0.1 if tiny else 1.0, embed_wd=0.1 if tiny else 1.0,
      clip_norm=1.0 if tiny else 0.0, ema_decay=0.99 if tiny else 0.999))
  # Within a slice (ICI): data x fsdp x tensor; dcn_data: data parallelism
  # across slices or processes (docs/launching.md).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                               dcn_data=1))
  return config


# Fields that configs saved by older runs lack; readers use `.get` with the
# default (test_examples 0: the whole test split).
ADDED_LATER = ("test_examples",)


def check_fields(config: ml_collections.ConfigDict) -> None:
  """No field of the puzzle config missing, none it lacks (model, solve and
  optimizer are checked against their dataclasses instead)."""
  puzzle = config.get("data", {}).get("puzzle", "sudoku")
  puzzle = puzzle if puzzle in ("sudoku", "maze") else "sudoku"
  configs.check_fields(config, get_config(puzzle, "tiny"),
                       f"attractor_jax/configs/{puzzle}.py",
                       added_later=ADDED_LATER)
