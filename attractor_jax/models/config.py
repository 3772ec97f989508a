"""The configuration dataclasses of the language models: one class per kind.

`ModelConfig` holds the settings every LM kind shares; each kind has its own
subclass with its kind fixed (`AttractorLMConfig`, `GPTConfig`,
`LoopedConfig`, `DEQConfig`), registered as the kind's `config_class` in
`attractor_jax.models.registry`. Every class keeps every field, so a saved
config (`config_to_dict`) has the same keys whatever its kind, and old
config.json files and checkpoints load unchanged.

`ModelConfig(kind=...)` still works: it builds the registered class of that
kind, as do `config_from_dict(values)` (a saved config) and
`registry.config_for_kind(kind, **fields)`:

    ModelConfig(kind="gpt", dim=128)            # a GPTConfig
    GPTConfig(dim=128)                          # the same config
    GPTConfig(kind="looped")                    # errors.ConfigError

Why one module of ~460 lines: the base config and each kind's subclass
are one table of fields, read side by side.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, ClassVar, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from attractor_jax import errors
from attractor_jax.models import registry
from attractor_jax.nn import attractor_head
from attractor_jax.nn import block_stack
from attractor_jax.nn import blocks
from attractor_jax.nn import mlp as mlp_lib
from attractor_jax.nn import rotary

MODEL_KINDS = ("attractor", "gpt", "looped", "deq")

# The language models' default solve (the presets set their own stopping
# rules, explicitly): Anderson (history 5, mixing 1) to tol 1e-3 within 32
# steps, with the one-step gradient u = v + J^T v. The public code trains
# with it, and the paper's Table 5 (60M model) puts it at perplexity 34.05
# against 33.91 for the implicit gradient, which takes 4.8x the memory and
# 2.7x the step time (docs/design.md section 1.4). `SolveConfig()` alone has
# `fixed_point`'s defaults (implicit backward, tol 1e-4, 50 steps).
LM_SOLVE = attractor_head.SolveConfig(
    solver="anderson", history=5, mixing=1.0, max_iter=32, min_iter=0,
    tol=1e-3, backward="onestep")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}
# The smallest solve.tol training accepts for a head that computes in 16-bit
# floats. Their rounding leaves a residual floor of about 0.8 u ||y* - c|| /
# ||c|| (u = 2^-8, bfloat16's unit roundoff): 7.7e-4 at a head contribution
# of 0.23, 2.0e-3 at 0.66 (tests/models/test_precision.py); u covers a head
# that moves y* by up to ||c||.
BF16_HEAD_MIN_TOL = 4e-3


def check_head_precision(config: "ModelConfig") -> None:
  """Refuses a 16-bit head asked to converge below its rounding floor.

  Raises:
    errors.ConfigError: head_dtype (or dtype) is 16-bit and solve.tol is
      below `BF16_HEAD_MIN_TOL`; the message gives both ways out.
  """
  solve = getattr(config, "solve", None)
  if (solve is None or not registry.supports(config.kind,
                                             registry.SOLVER_STATS)
      or jnp.finfo(config.jnp_head_dtype).bits > 16):
    return
  if solve.tol < BF16_HEAD_MIN_TOL:
    head = config.head_dtype or config.dtype
    raise errors.ConfigError(
        f"solve.tol {solve.tol:g} is below what a {head} head can reach (its "
        "rounding leaves a residual of up to about 4e-3, so steps would run "
        "solve.max_iter iterations).\nPass --config.model.head_dtype=float32 "
        f"(the head computes in float32, the rest in {config.dtype}) or "
        f"--config.solve.tol={BF16_HEAD_MIN_TOL:g} or more.")



@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and settings of an LM; fields a kind does not use are ignored.

  The base class of the kinds' config classes. `ModelConfig(kind=K, ...)`
  returns an instance of K's registered class (`config_class(K)`), so no
  config is a bare ModelConfig. The fields of one kind only (head_layers,
  gate_*, solve, prelude/coda_layers, mean/backprop_depth, ...) stay on the
  base: a saved config holds every field whatever its kind, and the training
  config's model overrides (attractor_jax/configs/lm.py) are this class's
  fields.

  Attributes:
    kind: "attractor", "gpt", "looped" or "deq"; each subclass takes only
      its own (`KIND`).
    vocab_size, dim, num_heads, mlp_dim: sizes.
    num_layers: backbone blocks (attractor), all blocks (gpt), core blocks
      (looped, deq).
    head_layers: blocks of the attractor head's residual branch R.
    prelude_layers, coda_layers: looped model's untied blocks before/after.
    mean_depth: looped model's mean number of core iterations in training
      (and its depth at evaluation); backprop_depth: steps that get gradients.
    mlp, norm, qk_norm, rope_theta, rope_convention, norm_eps: block settings.
    qk_norm_eps: epsilon of the QK-norm; None (our models) uses norm_eps.
      Imported public checkpoints set float32's machine epsilon, which is
      what the public code's weightless QK-norm uses on float32 activations.
    gate_max, gate_init: attractor head gates (gamma_max, layer_scale_init).
    injection: how the attractor head's map takes the proposal c, one of
      `attractor_head.INJECTIONS` ("additive", the paper's; "init_only" and
      "concat" are its Table 4 ablations).
    solve: the attractor head's (or DEQ's) solver settings (default
      `LM_SOLVE`, not `SolveConfig()`).
    tie_embeddings: unembed with the embedding (the DEQ's default is False:
      an untied head, as in the DEQ literature; True is the paper's "DEQ +
      tied unembedding").
    logit_softcap: if set, logits = cap * tanh(logits / cap).
    ignore_index: targets equal to this are left out of the loss.
    embed_init_std, init_std, out_init_scale: initialisation.
    head_out_init_scale: out_init_scale of the attractor head's blocks. Not
      zero by default: a head whose output projections start at zero is the
      constant map f(y; c) = c, which converges at once and gives its gates
      no gradient.
    dtype, param_dtype: "float32" / "bfloat16" activations and parameters
      (the optimizer's state follows the parameters).
    jacobian_penalty: DEQ only: weight of the Hutchinson estimate of
      ||df/dz||_F^2 / dim at z* added to the training loss (models/deq.py).
    head_dtype: the compute dtype of the blocks that are solved (the
      attractor head, the DEQ core); None: `dtype`. Their iterates, the
      residuals and the solver's state are float32 whatever it is. A
      bfloat16 head's residual stops at 1e-3 to 4e-3 (docs/precision.md), so
      training refuses a bfloat16 head with a solve.tol below
      `BF16_HEAD_MIN_TOL`; "float32" here with dtype "bfloat16" is the mixed
      policy the presets' tolerances need.
    scan_layers: hold the backbone's (attractor) or all (gpt) blocks'
      parameters stacked on a leading "layers" axis and run them as one
      scan (`nn/block_stack.py`): compile time stops growing with depth.
      Another parameter layout: `block_stack.stack_layers` / `unstack_layers`
      convert checkpoints. Attractor and gpt only.
    remat: rematerialise those blocks in the backward pass: "none", "full"
      (save nothing), "dots" (save matmuls without batch dimensions: the
      dense projections, not attention scores) or "dots_saveable" (save
      every matmul). Attractor and gpt only; with or without scan_layers.
  """

  KIND: ClassVar[str] = ""
  # The model's attribute that scan_layers stacks ("": the kind has none).
  LAYER_STACK: ClassVar[str] = ""

  kind: str = "attractor"
  vocab_size: int = 256
  dim: int = 64
  num_heads: int = 4
  mlp_dim: int = 256
  num_layers: int = 2
  head_layers: int = 1
  prelude_layers: int = 1
  coda_layers: int = 1
  mean_depth: int = 4
  backprop_depth: int = 2
  mlp: str = "relu2"
  norm: str = "pre"
  qk_norm: bool = True
  rope_theta: float = 50000.0
  rope_convention: str = "half"
  norm_eps: float = 1e-5
  qk_norm_eps: Optional[float] = None
  causal: bool = True
  gate_max: float = 1.0
  gate_init: float = 0.1
  injection: str = "additive"
  solve: attractor_head.SolveConfig = LM_SOLVE
  tie_embeddings: bool = True
  logit_softcap: Optional[float] = None
  ignore_index: int = -100
  embed_init_std: float = 0.02
  init_std: float = 0.02
  out_init_scale: float = 0.0
  head_out_init_scale: float = 1.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  head_dtype: Optional[str] = None
  jacobian_penalty: float = 0.0
  scan_layers: bool = False
  remat: str = "none"

  def __new__(cls, *args, **kwargs):
    """A bare ModelConfig(kind=K, ...) is an instance of K's config class."""
    if cls is ModelConfig:
      kind = args[0] if args else kwargs.get("kind", _DEFAULT_KIND)
      cls = config_class(kind)
    return super().__new__(cls)

  def __post_init__(self):
    """Checks names, sizes and ranges (cheaply: no parameters are built).

    Raises:
      errors.ConfigError: naming the field, the bad value and what it takes.
    """
    choices = dict(kind=MODEL_KINDS, dtype=tuple(DTYPES),
                   param_dtype=tuple(DTYPES),
                   head_dtype=tuple(DTYPES) + (None,), mlp=mlp_lib.KINDS,
                   norm=blocks.NORM_PLACEMENTS,
                   rope_convention=rotary.CONVENTIONS,
                   remat=tuple(block_stack.REMAT_POLICIES),
                   injection=tuple(attractor_head.INJECTIONS))
    for name, known in choices.items():
      if getattr(self, name) not in known:
        raise errors.ConfigError(
            f"Unknown model.{name} {getattr(self, name)!r}; expected one of "
            f"{', '.join(map(str, known))}.")
    if self.kind != self.KIND:
      raise errors.ConfigError(
          f"{type(self).__name__} is the config of {self.KIND!r} models; got "
          f"kind={self.kind!r}. Use {config_class(self.kind).__name__}, or "
          f"ModelConfig(kind={self.kind!r}, ...).")
    minimum = dict(vocab_size=1, dim=1, num_heads=1, mlp_dim=1, num_layers=1,
                   head_layers=0, prelude_layers=0, coda_layers=0)
    minimum.update(self._least_sizes())
    for name, least in minimum.items():
      value = getattr(self, name)
      if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
          or value < least):
        raise errors.ConfigError(
            f"model.{name} must be an integer >= {least}; got {value!r}.")
    if self.dim % self.num_heads:
      raise errors.ConfigError(
          f"model.dim {self.dim} is not divisible by model.num_heads "
          f"{self.num_heads}.")
    if (self.dim // self.num_heads) % 2:
      raise errors.ConfigError(
          f"model.dim / model.num_heads = {self.dim // self.num_heads} must "
          "be even (rotary embeddings rotate pairs of channels).")
    if not isinstance(self.scan_layers, bool):
      raise errors.ConfigError(
          f"model.scan_layers must be True or False; got "
          f"{self.scan_layers!r}.")
    if (self.scan_layers or self.remat != "none") and not self.LAYER_STACK:
      raise errors.ConfigError(
          f"model.scan_layers and model.remat apply to attractor and gpt "
          f"models only; a {self.kind} model takes scan_layers=False, "
          f"remat='none' (got {self.scan_layers}, {self.remat!r}).")
    positive = dict(norm_eps=self.norm_eps, rope_theta=self.rope_theta,
                    gate_max=self.gate_max)
    if self.logit_softcap is not None:
      positive["logit_softcap"] = self.logit_softcap
    if self.qk_norm_eps is not None:
      positive["qk_norm_eps"] = self.qk_norm_eps
    for name, value in positive.items():
      if not value > 0:
        raise errors.ConfigError(f"model.{name} must be > 0; got {value!r}.")
    if not (isinstance(self.jacobian_penalty, numbers.Real)
            and self.jacobian_penalty >= 0):
      raise errors.ConfigError(f"model.jacobian_penalty must be a number >= "
                               f"0; got {self.jacobian_penalty!r}.")
    self._check_kind()

  def _least_sizes(self) -> dict[str, int]:
    """The kind's own lower bounds of integer fields (over the shared ones)."""
    return {}

  def _check_kind(self) -> None:
    """The kind's own checks, after the shared ones."""

  @property
  def jnp_dtype(self):
    return DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def jnp_head_dtype(self):
    """The solved blocks' compute dtype (`head_dtype`, else `dtype`)."""
    return DTYPES[self.head_dtype or self.dtype]

  def block_spec(self, *, gated: bool = False, **overrides) -> blocks.BlockSpec:
    """The BlockSpec of this model's blocks (gated for the attractor head)."""
    fields = dict(
        dim=self.dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        mlp=self.mlp, norm=self.norm, qk_norm=self.qk_norm,
        rope_theta=self.rope_theta, rope_convention=self.rope_convention,
        causal=self.causal, norm_eps=self.norm_eps,
        qk_norm_eps=self.qk_norm_eps,
        gate_max=self.gate_max if gated else None, gate_init=self.gate_init,
        init_std=self.init_std,
        out_init_scale=(self.head_out_init_scale if gated
                        else self.out_init_scale),
        dtype=self.jnp_dtype, param_dtype=self.jnp_param_dtype)
    fields.update(overrides)
    return blocks.BlockSpec(**fields)

  def replace(self, **changes) -> "ModelConfig":
    """A copy with `changes`; a new kind gives that kind's config class."""
    if "kind" in changes and changes["kind"] != self.kind:
      fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
      return ModelConfig(**dict(fields, **changes))
    return dataclasses.replace(self, **changes)


_DEFAULT_KIND = ModelConfig.kind      # the field's default, "attractor"


@dataclasses.dataclass(frozen=True)
class AttractorLMConfig(ModelConfig):
  """The Attractor LM (models/attractor_lm.py): backbone + attractor head.

  Uses num_layers (backbone blocks, may be 0), head_layers (>= 1), gate_max,
  gate_init (in (0, gate_max)), head_out_init_scale and solve, besides the
  shared fields.
  """

  KIND: ClassVar[str] = "attractor"
  LAYER_STACK: ClassVar[str] = "backbone"
  kind: str = "attractor"

  def _least_sizes(self) -> dict[str, int]:
    return dict(num_layers=0, head_layers=1)

  def _check_kind(self) -> None:
    if not 0 < self.gate_init < self.gate_max:
      raise errors.ConfigError(
          f"model.gate_init must lie in (0, gate_max={self.gate_max}); got "
          f"{self.gate_init}.")


@dataclasses.dataclass(frozen=True)
class GPTConfig(ModelConfig):
  """The Transformer baseline (models/gpt.py): num_layers causal blocks."""

  KIND: ClassVar[str] = "gpt"
  LAYER_STACK: ClassVar[str] = "blocks"
  kind: str = "gpt"


@dataclasses.dataclass(frozen=True)
class LoopedConfig(ModelConfig):
  """The Parcae-style looped baseline (models/looped.py).

  Uses prelude_layers, num_layers (the looped core), coda_layers, mean_depth
  and backprop_depth (both >= 1), besides the shared fields.
  """

  KIND: ClassVar[str] = "looped"
  kind: str = "looped"

  def _least_sizes(self) -> dict[str, int]:
    return dict(mean_depth=1, backprop_depth=1)


@dataclasses.dataclass(frozen=True)
class DEQConfig(ModelConfig):
  """The DEQ baseline (models/deq.py): num_layers blocks solved with solve.

  Its output head is untied by default; tie_embeddings=True unembeds with
  the embedding (the paper's "DEQ + tied unembedding", Table 3).
  """

  KIND: ClassVar[str] = "deq"
  kind: str = "deq"
  tie_embeddings: bool = False


def config_class(kind: str) -> type:
  """The config class registered for an LM kind (a ModelConfig subclass).

  Raises:
    errors.ConfigError: `kind` is no LM kind (the message lists them).
  """
  if isinstance(kind, str) and kind in registry.kinds():
    found = registry.entry(kind).config_class
    if isinstance(found, type) and issubclass(found, ModelConfig):
      return found
    raise errors.ConfigError(
        f"Unknown model.kind {kind!r}; expected one of "
        f"{', '.join(MODEL_KINDS)} ({kind!r} is a model kind with its own "
        f"config class, {found.__name__}).")
  raise errors.ConfigError(f"Unknown model.kind {kind!r}; expected one of "
                           f"{', '.join(MODEL_KINDS)}.")


def config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
  """The config of a saved dict (`config_to_dict` of a config, config.json).

  The dict's kind (default "attractor") picks the class; a nested `solve`
  dict becomes a SolveConfig.

  Raises:
    errors.ConfigError: an unknown kind or field, or a value the config
      refuses.
  """
  values = dict(values)
  cls = config_class(values.get("kind", _DEFAULT_KIND))
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise errors.ConfigError(f"Unknown model field(s) {unknown}; "
                             f"{cls.__name__} has {sorted(known)}.")
  if isinstance(values.get("solve"), Mapping):
    values["solve"] = solve_config_from_dict(values["solve"])
  return cls(**values)


def solve_config_from_dict(values: Mapping[str, Any]
                           ) -> attractor_head.SolveConfig:
  """A saved `solve` dict as a SolveConfig; fields it lacks take defaults.

  A dict saved before SolveConfig had per-solver options (no `damping` key)
  meant Picard's damping by `mixing`, and gave Broyden neither `history` nor
  `mixing`: those are mapped to today's fields, so the solve is unchanged.

  Raises:
    errors.ConfigError: an unknown field, or a value SolveConfig refuses.
  """
  values = dict(values)
  known = {f.name for f in dataclasses.fields(attractor_head.SolveConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise errors.ConfigError(f"Unknown solve field(s) {unknown}; SolveConfig "
                             f"has {sorted(known)}.")
  if "damping" not in values and values.get("solver") in ("picard",
                                                           "broyden"):
    legacy_mixing = values.pop("mixing", None)
    values.pop("history", None)
    if values["solver"] == "picard" and legacy_mixing is not None:
      values["damping"] = legacy_mixing
  return attractor_head.SolveConfig(**values)


def config_to_dict(config: Any) -> dict:
  """A JSON-serialisable dict of a dataclass, ConfigDict, mapping or None.

  Values JSON cannot hold (dtypes, tuples' contents, enums...) become their
  `str`; tuples become lists.
  """
  if config is None:
    return {}
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  elif dataclasses.is_dataclass(config) and not isinstance(config, type):
    config = dataclasses.asdict(config)
  return json.loads(json.dumps(_jsonable(config)))


def _jsonable(x: Any) -> Any:
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return _jsonable(dataclasses.asdict(x))
  if hasattr(x, "to_dict"):
    return _jsonable(x.to_dict())
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (bool, int, str)) or x is None:
    return x
  if isinstance(x, float):
    return x if math.isfinite(x) else str(x)
  if isinstance(x, (np.generic, np.ndarray, jax.Array)) and np.ndim(x) == 0:
    return _jsonable(np.asarray(x).item())
  return str(x)
