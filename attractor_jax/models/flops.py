"""Training FLOPs per token of every LM kind, every solver iteration counted.

A multiply-add is 2 FLOPs; a backward pass costs twice its forward (the
activation gradient and the weight gradient, one matmul each). Attention
counts the full seq x seq score and mixing products, as PaLM's MFU does
(a causal kernel that skips the hidden half does less work than counted).
Embedding lookups, norms, gates and softmax are left out: they are not
matmuls and change the count by well under 1%.

Solved blocks (the attractor head, the DEQ core) cost, per token:

    forward solve     (iterations + 1) forward passes (the last evaluation
                      measures the final iterate's residual)
    backward          onestep: 4 (one linearisation at y*, J^T v on the
                      activation path, the full vjp); jfb: 3; implicit:
                      3 + backward iterations (each a J^T u); phantom:
                      3 x phantom_steps; unrolled: 2 x forward iterations
                      on top of the forward solve.

The looped model runs `mean_depth` core steps on average and backpropagates
through the last `backprop_depth` of them.
"""

from __future__ import annotations

from typing import Optional

from attractor_jax.models.config import ModelConfig


def block_forward_flops(config: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token of one transformer block."""
  d, f = config.dim, config.mlp_dim
  mlp_matrices = 3 if config.mlp == "swiglu" else 2
  projections = 2 * (4 * d * d + mlp_matrices * d * f)
  attention = 2 * 2 * seq_len * d        # scores q.k and mixing p.v
  return float(projections + attention)


def solved_blocks_flops(block: float, num_blocks: int, solve, iterations:
                        float, backward_iterations: Optional[float] = None,
                        map_extra: float = 0.0) -> float:
  """Training FLOPs per token of blocks solved to a fixed point.

  Args:
    block: forward FLOPs per token of one block.
    num_blocks: blocks in the solved map.
    solve: the SolveConfig (its `backward` mode, phantom steps, max_iter).
    iterations: forward solver iterations (mean over examples).
    backward_iterations: the implicit backward solve's iterations (default
      its max_iter: an upper bound).
    map_extra: forward FLOPs per token of the map outside its blocks (the
      concat injection's projection).
  """
  per_map = block * num_blocks + map_extra
  forward = (iterations + 1) * per_map
  mode = solve.backward
  if mode == "onestep":
    backward = 4 * per_map
  elif mode == "jfb":
    backward = 3 * per_map
  elif mode == "implicit":
    if backward_iterations is None:
      backward_iterations = solve.backward_max_iter or solve.max_iter
    backward = (3 + backward_iterations) * per_map
  elif mode == "phantom":
    backward = 3 * solve.phantom_steps * per_map
  elif mode == "unrolled":
    backward = 2 * (iterations + 1) * per_map
  else:
    raise ValueError(f"Unknown backward mode {mode!r}.")
  return forward + backward


def train_flops_per_token(config: ModelConfig, seq_len: int,
                          iterations: Optional[float] = None,
                          backward_iterations: Optional[float] = None
                          ) -> float:
  """Training FLOPs per token (forward + backward) of an LM of any kind.

  Args:
    config: the model's config (its kind decides the formula).
    seq_len: tokens per sequence (the attention products grow with it).
    iterations: mean forward solver iterations of the attractor head or DEQ
      core (default `solve.max_iter`: an upper bound).
    backward_iterations: mean implicit-backward iterations (see
      `solved_blocks_flops`).
  """
  block = block_forward_flops(config, seq_len)
  unembed = 3 * 2 * config.dim * config.vocab_size
  kind = config.kind
  if kind == "gpt":
    return 3 * config.num_layers * block + unembed
  if kind == "looped":
    outer = config.prelude_layers + config.coda_layers
    depth = config.mean_depth
    core = config.num_layers * block * (depth
                                        + 2 * min(config.backprop_depth, depth))
    return 3 * outer * block + core + unembed
  if iterations is None:
    iterations = config.solve.max_iter
  if kind == "attractor":
    projection = (2 * 2 * config.dim * config.dim
                  if config.injection == "concat" else 0.0)
    return (3 * config.num_layers * block + unembed + solved_blocks_flops(
        block, config.head_layers, config.solve, iterations,
        backward_iterations, map_extra=projection))
  if kind == "deq":
    return unembed + solved_blocks_flops(
        block, config.num_layers, config.solve, iterations,
        backward_iterations)
  raise ValueError(f"No FLOP count for model kind {kind!r}.")
