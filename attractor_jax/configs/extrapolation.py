"""Logical extrapolation: train on small instances, solve larger ones by
iterating longer (attractor_jax/tasks/extrapolation).

  python -m attractor_jax.train --workdir=/tmp/ps \
      --config=attractor_jax/configs/extrapolation.py:prefix-sums
  python -m attractor_jax.evaluate --workdir=/tmp/ps \
      [--test_sizes=32,128,512] [--max_iter=2000]

Variants:
  prefix-sums                running parity of bit strings: trained at 32 bits,
                             tested at 32, 128 and 512.
  prefix-sums-feedforward    the equal-parameter feed-forward baseline.
  prefix-sums-implicit       the attractor trained through its solve with the
                             implicit gradient (the paper's way), for
                             comparison.
  mazes                      the S -> G path of perfect mazes: trained at 5x5
                             cells, tested at 5, 10 and 20.
  mazes-feedforward          its feed-forward baseline.

The prefix-sums recipe (3 seeds: 100% exact at 32, 128 and 512 bits, every
solve converged, about a minute of training on one core): width 32, one
ConvBlock, additive injection; progressive training (n ~ U{0..29} detached
map applications from c, then 10 with gradients, cross-entropy at the end);
AdamW lr 1e-3, weight decay 1e-4, 50 warm-up steps then cosine, clipping at
1, batch 32, 3000 steps; tested by Anderson (m=5) to tol 1e-3 with max_iter
growing with the size. Any field takes a dotted override
(--config.data.test_sizes='(32,256)', --config.training.max_warm=20, ...).
"""

from __future__ import annotations

import difflib

import ml_collections

from attractor_jax import configs
from attractor_jax import errors
from attractor_jax.configs.lm import placeholders
from attractor_jax.models.reasoning import conv
from attractor_jax.nn.attractor_head import SolveConfig

VARIANTS = ("prefix-sums", "prefix-sums-feedforward", "prefix-sums-implicit",
            "mazes", "mazes-feedforward")
# Model fields the task derives from the problem, not set in a config.
DERIVED_MODEL_FIELDS = ("kind", "ndim", "in_channels", "num_classes",
                        "solve")


def check_variant(variant: str) -> str:
  key = variant.strip().lower()
  if key in VARIANTS:
    return key
  close = difflib.get_close_matches(key, VARIANTS, n=1, cutoff=0.6)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise errors.ConfigError(
      f"Unknown config variant {variant!r}.{hint} Use "
      "--config=attractor_jax/configs/extrapolation.py:VARIANT with one of: "
      f"{', '.join(VARIANTS)}.")


def _model_fields(kind: str) -> ml_collections.ConfigDict:
  """`kind` and typed, unset fields of both conv model configs, so that
  --config.model.kind may switch between them."""
  fields = ml_collections.ConfigDict()
  for cls in (conv.ConvReasonerConfig, conv.ConvFeedForwardConfig):
    for name, value in placeholders(cls, skip=DERIVED_MODEL_FIELDS).items():
      if name not in fields:
        fields[name] = value
  fields.kind = kind
  return fields


def get_config(variant: str = "prefix-sums") -> ml_collections.ConfigDict:
  """The training config of `variant`."""
  variant = check_variant(variant)
  mazes = variant.startswith("mazes")
  feedforward = variant.endswith("feedforward")
  config = ml_collections.ConfigDict()
  config.task = "extrapolation"       # see attractor_jax/training/tasks.py
  # Sizes: bits of a string, or cells per side of a maze.
  config.data = ml_collections.ConfigDict(dict(
      problem="mazes" if mazes else "prefix_sums",
      train_size=5 if mazes else 32,
      test_sizes=(5, 10, 20) if mazes else (32, 128, 512)))
  config.model = _model_fields(
      "conv_feedforward" if feedforward else "conv_reasoner")
  config.model.width = 32
  if feedforward:
    # About the reasoner's parameters (1-D 7726 vs 7986, 2-D 22900 vs
    # 24306): a deeper, narrower untied stack.
    config.model.width, config.model.depth = 11, 10
  else:
    config.model.num_blocks = 1
    config.model.injection = "additive"
  # The head's solve: at test time (max_iter then set per size by
  # `evaluation`) and in training in the implicit mode.
  config.solve = placeholders(SolveConfig)
  config.solve.solver = "anderson"
  config.solve.history = 5
  config.solve.tol = 1e-3
  config.solve.max_iter = 60
  # progressive: `steps` map applications with gradients after n ~
  # U{0..max_warm-1} detached ones; implicit: through the solve (the head's
  # backward). A feed-forward model trains directly whatever the mode.
  config.training = ml_collections.ConfigDict(dict(
      mode="implicit" if variant == "prefix-sums-implicit" else "progressive",
      max_warm=30, steps=10))
  # Test-time solve at size s: max_iter = max_iter_base + max_iter_per_size
  # * s. The budget curve: exact accuracy after each count of `budgets`
  # map applications (looped view) and with the solve stopped there, at
  # `budget_sizes` (empty: none).
  config.evaluation = ml_collections.ConfigDict(dict(
      max_iter_base=100, max_iter_per_size=80 if mazes else 4,
      budgets=(10, 20, 40, 80, 160, 320, 640) if mazes
      else (8, 16, 32, 64, 128, 256, 512),
      budget_sizes=(10,) if mazes else (128,)))

  config.seed = 0
  config.batch_size = 32
  # Provisional maze recipe (still being researched; LOG of issue 19): 5x5
  # training, 2000 steps; about 97% exact at 5x5, far less at 10x10.
  config.total_steps = 2000 if mazes else 3000
  config.log_every = 100
  config.eval_every = 1000
  # Periodic validation: eval_examples instances at the training size and
  # at the largest test size; the final evaluation: test_examples at every
  # test size.
  config.eval_examples = 100
  config.test_examples = 200 if mazes else 500
  config.eval_batch_size = 25 if mazes else 250
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2
  # A uniform guess costs ln 2 per position; only non-finite steps are bad.
  config.divergence = ml_collections.ConfigDict(dict(
      max_consecutive_bad_steps=20, max_loss_factor=0.0))
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, schedule="cosine", warmup_steps=50,
      final_lr_fraction=0.01, b1=0.9, b2=0.999, weight_decay=1e-4,
      embed_wd=1e-4, clip_norm=1.0))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                               dcn_data=1))
  return config


def check_fields(config: ml_collections.ConfigDict) -> None:
  """No field of the extrapolation config missing, none it lacks."""
  configs.check_fields(config, get_config(),
                       "attractor_jax/configs/extrapolation.py")
