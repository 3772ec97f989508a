"""Configs of the puzzle models: TRM, the Attractor reasoner, a Transformer.

All three share TRM's network (docs/design.md section 1.7): post-norm blocks
with SwiGLU MLPs, RMSNorm, RoPE (theta 10000) and non-causal attention, an
input embedding scaled by sqrt(dim), a learned puzzle-embedding prefix and an
untied output head. They differ in how the network is applied per segment.

Each config class names the capabilities of its model (`capabilities`), so
code that drives a model asks the config instead of testing kind names.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar, Optional

import jax.numpy as jnp

from attractor_jax import errors
from attractor_jax.models import registry
from attractor_jax.nn import blocks
from attractor_jax.nn.attractor_head import SolveConfig

# Capabilities a config may declare (the names of `attractor_jax.models`'
# registry features).
# The package registry's feature names: a learned halting logit (q_halt), a
# test-time depth (`depth=` of __call__), SolverStats in SegmentOutput.stats.
HALTING = registry.HALTING
DEPTH_SWEEP = registry.DEPTH_SWEEP
SOLVER_STATS = registry.SOLVER_STATS
CAPABILITIES = (HALTING, DEPTH_SWEEP, SOLVER_STATS)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}


def _check_integers(prefix: str, minimum: dict, config) -> None:
  for name, least in minimum.items():
    value = getattr(config, name)
    if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
        or value < least):
      raise errors.ConfigError(
          f"{prefix}.{name} must be an integer >= {least}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ReasonerConfig:
  """Settings every puzzle model shares (defaults: TRM's 7M network).

  Attributes:
    kind: the model kind; each subclass accepts only its own.
    vocab_size: input and output tokens (Sudoku 11, Maze 6).
    seq_len: cells of a puzzle (Sudoku 81, Maze 900); inputs must have it.
    dim, num_heads, mlp_dim: widths. TRM's SwiGLU with expansion 4 at width
      512 has 1536 hidden units (4 * 512 * 2/3 rounded up to a multiple of 256).
    num_layers: blocks of the shared network.
    rope_theta, norm_eps: rotary base and RMSNorm epsilon.
    num_puzzle_ids: rows of the puzzle-embedding table. Id 0 is "unknown":
      pass it (or any id outside the table) for puzzles not seen in
      training. The table starts at zero, so an id that never trained reads
      as a zero prefix. TRM's Sudoku and Maze data give every puzzle id 0
      (one shared row); per-puzzle rows are what TRM uses for ARC.
    puzzle_emb_len: positions prepended to the grid (TRM: 16). The
      embedding fills the first `puzzle_emb_dim` channels of them, the rest
      are zeros; they are removed from the logits. The halting logit reads
      the first of them. 0: no prefix (halting reads the first cell).
    puzzle_emb_dim: width of a puzzle embedding (None: dim, as TRM's
      `puzzle_emb_ndim`); at most puzzle_emb_len * dim.
    max_segments: deep-supervision segments per puzzle (TRM: 16).
    init_std: std of the weight matrices (None: 1/sqrt(dim), TRM's LeCun
      normal at fan-in dim). The token embedding has std 1/sqrt(dim) and is
      scaled by sqrt(dim), as TRM's.
    out_init_scale: the blocks' output projections start at std
      weight_std * this (TRM: 1, LeCun at fan-in dim; 0: zeros).
    halt_bias_init: initial bias of the halting logit (TRM: -5, so nothing
      halts early in training); its weights start at zero.
    dtype, param_dtype: "float32", "bfloat16" or "float16".
  """

  KIND: ClassVar[str] = ""
  capabilities: ClassVar[frozenset] = frozenset()

  kind: str = ""
  vocab_size: int = 11
  seq_len: int = 81
  dim: int = 512
  num_heads: int = 8
  mlp_dim: int = 1536
  num_layers: int = 2
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  num_puzzle_ids: int = 1
  puzzle_emb_len: int = 16
  puzzle_emb_dim: Optional[int] = None
  max_segments: int = 16
  init_std: Optional[float] = None
  out_init_scale: float = 1.0
  halt_bias_init: float = -5.0
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    """Checks names and sizes (cheaply: nothing is built).

    Raises:
      errors.ConfigError: naming the field, the bad value and what it takes.
    """
    if not self.kind:
      object.__setattr__(self, "kind", self.KIND)
    if self.kind != self.KIND:
      raise errors.ConfigError(
          f"{type(self).__name__}.kind must be {self.KIND!r}; got "
          f"{self.kind!r}.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise errors.ConfigError(
            f"Unknown model.{name} {getattr(self, name)!r}; expected one of "
            f"{', '.join(DTYPES)}.")
    _check_integers("model", dict(
        vocab_size=1, seq_len=1, dim=1, num_heads=1, mlp_dim=1, num_layers=1,
        num_puzzle_ids=1, puzzle_emb_len=0, max_segments=1), self)
    if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
      raise errors.ConfigError(
          f"model.dim {self.dim} must split into model.num_heads "
          f"{self.num_heads} heads of an even width (rotary embeddings "
          "rotate pairs of channels).")
    if self.puzzle_emb_dim is not None:
      _check_integers("model", dict(puzzle_emb_dim=1), self)
      if self.puzzle_emb_dim > self.puzzle_emb_len * self.dim:
        raise errors.ConfigError(
            f"model.puzzle_emb_dim {self.puzzle_emb_dim} does not fit in "
            f"model.puzzle_emb_len {self.puzzle_emb_len} positions of width "
            f"{self.dim}.")
    if not self.out_init_scale >= 0:
      raise errors.ConfigError(
          f"model.out_init_scale must be >= 0; got {self.out_init_scale!r}.")
    positive = dict(rope_theta=self.rope_theta, norm_eps=self.norm_eps)
    if self.init_std is not None:
      positive["init_std"] = self.init_std
    for name, value in positive.items():
      if not value > 0:
        raise errors.ConfigError(f"model.{name} must be > 0; got {value!r}.")

  @property
  def jnp_dtype(self):
    return DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def weight_std(self) -> float:
    """The std of weight matrices: init_std, or 1/sqrt(dim)."""
    return self.init_std if self.init_std is not None else 1 / math.sqrt(
        self.dim)

  @property
  def puzzle_width(self) -> int:
    """Channels of one puzzle embedding (0 without a prefix)."""
    if self.puzzle_emb_len == 0:
      return 0
    return self.dim if self.puzzle_emb_dim is None else self.puzzle_emb_dim

  @property
  def total_len(self) -> int:
    """Positions the network sees: the puzzle prefix, then the grid."""
    return self.puzzle_emb_len + self.seq_len

  def block_spec(self) -> blocks.BlockSpec:
    """TRM's block: post-norm, SwiGLU, RoPE, non-causal, no QK-norm."""
    return blocks.BlockSpec(
        dim=self.dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        mlp="swiglu", norm="post", qk_norm=False, rope_theta=self.rope_theta,
        causal=False, norm_eps=self.norm_eps, init_std=self.weight_std,
        out_init_scale=self.out_init_scale, dtype=self.jnp_dtype,
        param_dtype=self.jnp_param_dtype)

  def supports(self, capability: str) -> bool:
    """Whether this kind of model has `capability` (one of CAPABILITIES)."""
    if capability not in CAPABILITIES:
      raise ValueError(f"Unknown capability {capability!r}; expected one of "
                       f"{CAPABILITIES}.")
    return capability in self.capabilities

  @property
  def sweep_depth(self) -> int:
    """The training depth, the largest `depth=` of a test-time sweep."""
    raise ValueError(f"A {self.kind!r} model has no depth to sweep.")

  def replace(self, **changes) -> "ReasonerConfig":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class TRMConfig(ReasonerConfig):
  """Tiny Recursive Model: z <- net(z + y + x) L times, then y <- net(y + z).

  Per segment, H cycles run; the first H - 1 without gradient. Defaults are
  TRM's Sudoku-Extreme settings (H 3, L 6; Maze-Hard uses L 4).

  Attributes:
    h_cycles: H, cycles per segment (the last one gets gradients).
    l_cycles: L, latent updates per cycle; `depth=` overrides it.
  """

  KIND: ClassVar[str] = "trm"
  capabilities: ClassVar[frozenset] = frozenset({HALTING, DEPTH_SWEEP})

  h_cycles: int = 3
  l_cycles: int = 6

  def __post_init__(self):
    super().__post_init__()
    _check_integers("model", dict(h_cycles=1, l_cycles=1), self)

  @property
  def sweep_depth(self) -> int:
    return self.l_cycles


# Anderson with the repository's usual history. Its step limit matches the
# latent updates of TRM's Sudoku segment (3 cycles x 6); the phantom gradient
# differentiates K = 2 applications of the map at the fixed point
# (docs/design.md section 1.7).
REASONER_SOLVE = SolveConfig(solver="anderson", history=5, mixing=1.0,
                             max_iter=18, min_iter=0, tol=1e-3,
                             backward="phantom", phantom_steps=2)


@dataclasses.dataclass(frozen=True)
class AttractorReasonerConfig(ReasonerConfig):
  """TRM's protocol with the latent recursion solved: z* = net(z* + y + x).

  In bfloat16 the residual does not go much below 2e-3: use a solve.tol of
  3e-3 or more there.

  Attributes:
    h_cycles: solves per segment, each followed by y <- net(y + z*); the
      first h_cycles - 1 without gradient (TRM's H cycles).
    solve: solver, stopping rule and backward mode of z*; `depth=` overrides
      its max_iter.
    warm_start: start each segment's solve from the carried z (else from
      the initial z, a cold start).
    jacobian_penalty_weight: weight of the Hutchinson estimate of
      ||dF/dz||_F^2 / dim at z* (mean over the batch), returned as
      `SegmentOutput.aux_loss` in training. The estimate starts at a few
      tenths (a post-norm map of z + y + x, three unit-RMS terms, scales dz
      by about 1/sqrt(3)), so 0.1 adds a few hundredths: the size of a
      converged cross-entropy, and a gradient that keeps F contracting as
      it trains. 0 turns it off (nothing is computed).
    jacobian_penalty_samples: Hutchinson probes per example.
    out_init_scale: 0.25 here, not TRM's 1: at TRM's init the 8-layer map
      is far from contracting (spectral radius of dF/dz about 4.3 at the
      27M preset's first solve, 0.9 at 7M); at 0.25 it is 0.79 (27M) and
      0.68 (7M), and the first solve converges.
  """

  KIND: ClassVar[str] = "attractor_reasoner"
  capabilities: ClassVar[frozenset] = frozenset(
      {HALTING, DEPTH_SWEEP, SOLVER_STATS})

  out_init_scale: float = 0.25
  h_cycles: int = 1
  solve: SolveConfig = REASONER_SOLVE
  warm_start: bool = True
  jacobian_penalty_weight: float = 0.1
  jacobian_penalty_samples: int = 1

  def __post_init__(self):
    super().__post_init__()
    _check_integers("model", dict(h_cycles=1, jacobian_penalty_samples=1),
                    self)
    if not isinstance(self.solve, SolveConfig):
      raise errors.ConfigError(
          "model.solve must be a SolveConfig; got "
          f"{type(self.solve).__name__}.")
    if not self.jacobian_penalty_weight >= 0:
      raise errors.ConfigError(
          "model.jacobian_penalty_weight must be >= 0; got "
          f"{self.jacobian_penalty_weight!r}.")

  @property
  def sweep_depth(self) -> int:
    return self.solve.max_iter


@dataclasses.dataclass(frozen=True)
class TransformerReasonerConfig(ReasonerConfig):
  """The same blocks applied once: no recursion, no carry, no halting."""

  KIND: ClassVar[str] = "transformer_reasoner"
  capabilities: ClassVar[frozenset] = frozenset()

  max_segments: int = 1

  def __post_init__(self):
    super().__post_init__()
    if self.max_segments != 1:
      raise errors.ConfigError(
          "model.max_segments of a transformer_reasoner must be 1 (it keeps "
          f"no state between segments); got {self.max_segments!r}.")
