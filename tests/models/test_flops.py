"""Training FLOPs per token, checked against the models' real shapes."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from attractor_jax.models import build_model
from attractor_jax.models import flops
from attractor_jax.models import presets

SEQ = 128


def matrix_params(config, under: str) -> int:
  """Entries of the rank >= 2 parameters (matmul weights) under `under`."""
  model = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  total = 0
  for path, x in jax.tree_util.tree_leaves_with_path(
      nnx.state(model, nnx.Param)):
    names = jax.tree_util.keystr(path)
    if len(x.shape) >= 2 and f"'{under}'" in names:
      total += int(np.prod(x.shape))
  return total


def test_gpt_is_six_n_plus_attention_palm_style():
  config = presets.get_preset("gpt-tiny")
  n = matrix_params(config, "blocks") + config.dim * config.vocab_size
  expected = 6 * n + 12 * config.num_layers * SEQ * config.dim
  assert flops.train_flops_per_token(config, SEQ) == expected


def test_attractor_counts_every_solver_iteration_of_the_head():
  config = presets.get_preset("attractor-tiny")
  head_block = flops.block_forward_flops(config, SEQ) * config.head_layers
  # The head's matrices are what one map evaluation multiplies.
  assert head_block == (2 * matrix_params(config, "head")
                        + 4 * SEQ * config.dim * config.head_layers)
  at = lambda n: flops.train_flops_per_token(config, SEQ, iterations=n)
  assert at(8) - at(4) == 4 * head_block
  backbone_only = presets.get_preset("gpt-tiny").replace(
      num_layers=config.num_layers)
  # onestep: iterations + 1 forward evaluations, then 4 for the backward.
  assert at(4) == (flops.train_flops_per_token(backbone_only, SEQ)
                   + (4 + 1 + 4) * head_block)


def test_concat_injection_counts_its_projection_at_every_evaluation():
  config = presets.get_preset("attractor-tiny").replace(injection="concat")
  head_map = 2 * matrix_params(config, "head") + 4 * SEQ * config.dim
  at = lambda n: flops.train_flops_per_token(config, SEQ, iterations=n)
  assert at(8) - at(4) == 4 * head_map        # P [y; c] is part of the map
  additive = config.replace(injection="additive")
  assert at(4) - flops.train_flops_per_token(additive, SEQ, iterations=4) == (
      (4 + 1 + 4) * 2 * 2 * config.dim ** 2)


def test_backward_modes_cost_what_they_compute():
  config = presets.get_preset("attractor-tiny")
  cost = {}
  for mode in ("jfb", "onestep", "implicit", "unrolled"):
    solve = dataclasses.replace(config.solve, backward=mode,
                                solver="picard" if mode == "unrolled"
                                else config.solve.solver)
    cost[mode] = flops.train_flops_per_token(
        config.replace(solve=solve), SEQ, iterations=6,
        backward_iterations=6)
  assert cost["jfb"] < cost["onestep"] < cost["implicit"] < cost["unrolled"]


def test_looped_counts_its_depth_and_truncated_backprop():
  config = presets.get_preset("looped-tiny")
  block = flops.block_forward_flops(config, SEQ)
  deeper = config.replace(mean_depth=config.mean_depth + 1)
  # One more step: one more forward of the core (backprop depth unchanged).
  assert (flops.train_flops_per_token(deeper, SEQ)
          - flops.train_flops_per_token(config, SEQ)
          == pytest.approx(config.num_layers * block))
  deq = presets.get_preset("deq-tiny")
  assert flops.train_flops_per_token(deq, SEQ, iterations=4) < (
      flops.train_flops_per_token(deq, SEQ, iterations=8))
