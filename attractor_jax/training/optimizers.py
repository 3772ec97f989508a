"""Optimisers: AdamW, or Muon for backbone matrices with AdamW for the rest.

The recipe of docs/design.md section 2: Muon for the backbone's matrices;
AdamW for embeddings, norms, gates and the whole attractor head, whose learning
rate is `lr * fp_lr_scale` and whose matrices (only) decay with `fp_wd`; a
warm-up, then constant, trapezoid (constant then linear decay to 0) or cosine
schedule; global-norm clipping; updates from non-finite gradients skipped and
counted.

    tx = make_optimizer(OptimizerConfig(name="muon", lr=3e-3, total_steps=1000))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    ...
    skipped_updates(optimizer.opt_state)    # gradients that were NaN / Inf

Every parameter gets one of four labels from its path (`param_labels`):

    "head"          anything under a `head` attribute (the attractor head)
    "embedding"     the token embedding and an untied output projection
    "norm_or_gate"  norm scales, gate raws and every other parameter of rank < 2
    "matrix"        every other parameter of rank >= 2 (backbone projections)

Muon and rank-3 attention weights: optax.contrib's Muon orthogonalises 2-D
matrices and takes `MuonDimensionNumbers` to view a higher-rank tensor as one.
Our q/k/v projections are `[embed, heads, head_dim]` and the output projection
is `[heads, head_dim, embed]`; we orthogonalise them as the full
`[embed, heads * head_dim]` (resp. `[heads * head_dim, embed]`) matrix, as the
PyTorch reference does with its `nn.Linear` layers, not head by head. The rule
(`muon_dimension_numbers`): a rank >= 3 parameter named `wo` / `*out*` reduces
over all axes but the last; any other reduces over axis 0 and outputs the rest.

Why one module of ~440 lines: the parameter labels, the per-group
transforms and the schedules are one optimizer's parts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from optax.contrib import MuonDimensionNumbers

SCHEDULES = ("constant", "trapezoid", "cosine")
OPTIMIZERS = ("adamw", "muon")
LABELS = ("head", "embedding", "norm_or_gate", "matrix")
EMBEDDING_NAMES = ("embedding", "output")
NORM_OR_GATE_NAMES = ("scale", "raw")
_NEVER = int(jnp.iinfo(jnp.int32).max)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Settings of `make_optimizer` (an ml_collections ConfigDict works too).

  Attributes:
    name: "adamw" (AdamW everywhere) or "muon" (Muon for "matrix" params).
    lr: base learning rate (AdamW groups; Muon too unless `muon_lr` is set).
    schedule: "constant", "trapezoid" or "cosine" (see `make_schedule`).
    warmup_steps: linear warm-up from 0.
    total_steps: length of training (where trapezoid / cosine reach the end).
    decay_fraction: trapezoid: fraction of training spent decaying to 0.
    final_lr_fraction: cosine: final lr as a fraction of the peak.
    b1, b2, eps: AdamW moments.
    weight_decay: decoupled decay (times lr) of the "matrix" group.
    embed_wd: weight decay of the "embedding" group (default none).
    embed_lr: lr of the "embedding" group (None: `lr`).
    fp_lr_scale: the attractor head's lr is `lr * fp_lr_scale`.
    fp_wd: weight decay of the head's matrices (rank >= 2; never its norms
      and gates). None: `weight_decay`.
    clip_norm: global-norm clipping threshold (None or 0: no clipping).
    muon_lr: Muon's lr (None: `lr`).
    muon_momentum: Muon's momentum (beta).
    muon_ns_steps: Newton-Schulz iterations.
    muon_nesterov: Nesterov momentum in Muon.
    muon_consistent_rms: None: Muon's width scaling sqrt(max(1, out / in));
      a float r: scale updates to RMS r (0.2 matches AdamW, arXiv 2502.16982).
    max_consecutive_nonfinite: after this many consecutive non-finite
      gradients optax's `apply_if_finite` lets one through; None: never.
    ema_decay: keep an exponential moving average of the parameters with
      this decay in the optimizer state (`ema_params` reads it; evaluation
      uses it). None: no average.
  """

  name: str = "adamw"
  lr: float = 1e-3
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int = 1000
  decay_fraction: float = 0.5
  final_lr_fraction: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.0
  embed_wd: float = 0.0
  embed_lr: Optional[float] = None
  fp_lr_scale: float = 1.0
  fp_wd: Optional[float] = None
  clip_norm: Optional[float] = 1.0
  muon_lr: Optional[float] = None
  muon_momentum: float = 0.95
  muon_ns_steps: int = 5
  muon_nesterov: bool = True
  muon_consistent_rms: Optional[float] = None
  max_consecutive_nonfinite: Optional[int] = None
  ema_decay: Optional[float] = None

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"Unknown optimizer {self.name!r}; expected one of "
                       f"{OPTIMIZERS}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"Unknown schedule {self.schedule!r}; expected one of "
                       f"{SCHEDULES}.")
    if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
      raise ValueError(f"ema_decay must be in [0, 1) or None; got "
                       f"{self.ema_decay!r}.")

  @classmethod
  def from_config(cls, config: Any) -> "OptimizerConfig":
    """An OptimizerConfig from itself, a ConfigDict or a mapping.

    Raises:
      ValueError: on a field OptimizerConfig does not know (a typo).
    """
    if isinstance(config, cls):
      return config
    if hasattr(config, "to_dict"):
      config = config.to_dict()
    elif dataclasses.is_dataclass(config):
      config = dataclasses.asdict(config)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise ValueError(f"Unknown optimizer config fields {unknown}; known: "
                       f"{sorted(fields)}.")
    return cls(**dict(config))


# ----------------------------------------------------------------- schedules


def make_schedule(kind: str, base_lr: float, total_steps: int,
                  warmup_steps: int = 0, decay_fraction: float = 0.5,
                  final_lr_fraction: float = 0.0) -> optax.Schedule:
  """A learning-rate schedule: linear warm-up, then `kind`.

  Step s (the optimizer's update count, from 0) gets `base_lr * m(s)`, with a
  warm-up factor min(1, s / warmup_steps) (big_vision style: 0 at step 0,
  the full rate from step `warmup_steps`) times:

    constant:  1.
    trapezoid: 1 until `total_steps * (1 - decay_fraction)`, then a linear
      decay reaching 0 at `total_steps` (and staying 0 after it).
    cosine:    final + (1 - final) (1 + cos(pi p)) / 2, p the fraction of the
      post-warm-up steps done; `final = final_lr_fraction`.

  Args:
    kind: "constant", "trapezoid" or "cosine".
    base_lr: the peak learning rate.
    total_steps: length of training.
    warmup_steps: steps of linear warm-up.
    decay_fraction: trapezoid only, in [0, 1].
    final_lr_fraction: cosine only.

  Returns:
    A function of the step count to a float32 learning rate.
  """
  if kind not in SCHEDULES:
    raise ValueError(f"Unknown schedule {kind!r}; expected one of "
                     f"{SCHEDULES}.")
  if total_steps <= 0 or warmup_steps < 0:
    raise ValueError(f"Need total_steps > 0 and warmup_steps >= 0; got "
                     f"{total_steps} and {warmup_steps}.")
  if not 0.0 <= decay_fraction <= 1.0:
    raise ValueError(f"decay_fraction must lie in [0, 1]; got "
                     f"{decay_fraction}.")
  decay_steps = int(round(decay_fraction * total_steps))

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    factor = jnp.ones_like(step)
    if warmup_steps > 0:
      factor = jnp.minimum(1.0, step / warmup_steps)
    if kind == "trapezoid" and decay_steps > 0:
      factor *= jnp.clip((total_steps - step) / decay_steps, 0.0, 1.0)
    elif kind == "trapezoid":
      factor *= (step < total_steps).astype(jnp.float32)
    elif kind == "cosine":
      span = max(total_steps - warmup_steps, 1)
      progress = jnp.clip((step - warmup_steps) / span, 0.0, 1.0)
      cosine = 0.5 * (1.0 + jnp.cos(math.pi * progress))
      factor *= final_lr_fraction + (1.0 - final_lr_fraction) * cosine
    return base_lr * factor

  return schedule


def lr_schedule(config: Any, base_lr: Optional[float] = None
                ) -> optax.Schedule:
  """The config's schedule for `base_lr` (default `config.lr`), for logging."""
  config = OptimizerConfig.from_config(config)
  return make_schedule(
      config.schedule, config.lr if base_lr is None else base_lr,
      config.total_steps, config.warmup_steps, config.decay_fraction,
      config.final_lr_fraction)


# -------------------------------------------------------------------- labels


def _path_names(path) -> tuple:
  """Attribute names and list indices of a pytree path, without `.value`."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      names.append(key.key)
    elif isinstance(key, jax.tree_util.SequenceKey):
      names.append(key.idx)
    elif isinstance(key, jax.tree_util.GetAttrKey):
      if key.name not in ("value", "raw_value"):
        names.append(key.name)
    else:
      names.append(str(key))
  return tuple(names)


def label_of(names: Sequence[Any], ndim: int,
             head_keys: Sequence[str] = ("head",)) -> str:
  """The optimiser group of a parameter with path `names` and rank `ndim`."""
  if any(name in head_keys for name in names):
    return "head"
  leaf = names[-1] if names else None
  if leaf in EMBEDDING_NAMES:
    return "embedding"
  if leaf in NORM_OR_GATE_NAMES or ndim < 2:
    return "norm_or_gate"
  return "matrix"


def _map_params(fn: Callable[[tuple, Any], Any], params):
  """Maps fn(path names, leaf) over a pytree of arrays (e.g. a pure State)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: fn(_path_names(path), x), params)


def param_labels(params, head_keys: Sequence[str] = ("head",)):
  """A pytree like `params` holding each parameter's label (see module doc).

  Args:
    params: `nnx.state(model, nnx.Param)` (with or without `nnx.as_pure`), or
      any pytree of arrays whose paths carry attribute names.
    head_keys: path components that mark the attractor head.
  """
  return _map_params(lambda names, x: label_of(names, jnp.ndim(x), head_keys),
                     nnx.as_pure(params))


def muon_dimension_numbers(names: Sequence[Any], ndim: int
                           ) -> MuonDimensionNumbers:
  """How Muon views a parameter as a `[fan_in, fan_out]` matrix (module doc).

  Layers stacked for a scan (`nn/block_stack.py`: a "layers" entry in the
  path, the layer index leading) are viewed layer by layer: the numbers of
  one layer's parameter, shifted past the leading axis, which Muon then
  treats as a batch of matrices.
  """
  if "layers" in [str(n) for n in names] and ndim >= 3:
    inner = muon_dimension_numbers(
        [n for n in names if str(n) != "layers"], ndim - 1)
    shift = lambda axes: (axes + 1 if isinstance(axes, int)
                          else tuple(a + 1 for a in axes))
    return MuonDimensionNumbers(reduction_axis=shift(inner.reduction_axis),
                                output_axis=shift(inner.output_axis))
  if ndim <= 2:
    return MuonDimensionNumbers(reduction_axis=0, output_axis=1)
  leaf = str(names[-1]) if names else ""
  if leaf == "wo" or "out" in leaf:
    return MuonDimensionNumbers(reduction_axis=tuple(range(ndim - 1)),
                                output_axis=ndim - 1)
  return MuonDimensionNumbers(reduction_axis=0,
                              output_axis=tuple(range(1, ndim)))


def _matrix_mask(params):
  return _map_params(lambda names, x: jnp.ndim(x) >= 2, params)


# ----------------------------------------------------------------- optimizer


def _adamw(config: OptimizerConfig, lr: float, weight_decay: float,
           mask=None) -> optax.GradientTransformation:
  return optax.adamw(lr_schedule(config, lr), b1=config.b1, b2=config.b2,
                     eps=config.eps, weight_decay=weight_decay, mask=mask)


def _muon(config: OptimizerConfig) -> optax.GradientTransformation:
  """optax.contrib.muon with our 2-D views; it only ever sees "matrix" params,
  so its internal AdamW branch for non-matrices stays empty."""
  lr = config.lr if config.muon_lr is None else config.muon_lr
  return optax.contrib.muon(
      lr_schedule(config, lr), ns_steps=config.muon_ns_steps,
      beta=config.muon_momentum, eps=config.eps,
      weight_decay=config.weight_decay, nesterov=config.muon_nesterov,
      muon_weight_dimension_numbers=lambda tree: _map_params(
          lambda names, x: muon_dimension_numbers(names, jnp.ndim(x)), tree),
      consistent_rms=config.muon_consistent_rms)


def make_optimizer(config: Any, head_keys: Sequence[str] = ("head",)
                   ) -> optax.GradientTransformation:
  """The optimiser of `config` (OptimizerConfig, ConfigDict or mapping).

    apply_if_finite(chain(clip_by_global_norm, multi_transform({
        "matrix":       Muon (name="muon") or AdamW, weight_decay,
        "embedding":    AdamW, embed_lr, embed_wd,
        "norm_or_gate": AdamW, no weight decay,
        "head":         AdamW, lr * fp_lr_scale, fp_wd on rank >= 2 only,
    }, param_labels)), parameter_ema(ema_decay) if ema_decay is set)

  Works on an `nnx.State` of params (plain optax) and inside
  `nnx.Optimizer(model, tx, wrt=nnx.Param)`. A step whose gradients hold a
  NaN or Inf changes neither parameters nor moments; `skipped_updates` counts
  such steps.
  """
  config = OptimizerConfig.from_config(config)
  fp_wd = config.weight_decay if config.fp_wd is None else config.fp_wd
  embed_lr = config.lr if config.embed_lr is None else config.embed_lr
  transforms = {
      "matrix": (_muon(config) if config.name == "muon"
                 else _adamw(config, config.lr, config.weight_decay)),
      "embedding": _adamw(config, embed_lr, config.embed_wd),
      "norm_or_gate": _adamw(config, config.lr, 0.0),
      "head": _adamw(config, config.lr * config.fp_lr_scale, fp_wd,
                     mask=_matrix_mask),
  }
  tx = optax.multi_transform(
      transforms, lambda params: param_labels(params, head_keys))
  if config.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  if config.ema_decay is not None:
    tx = optax.chain(tx, parameter_ema(config.ema_decay))
  max_errors = (_NEVER if config.max_consecutive_nonfinite is None
                else config.max_consecutive_nonfinite)
  tx = optax.apply_if_finite(tx, max_errors)
  # nnx.Optimizer initialises from a State of Variables but updates with
  # plain arrays; initialising from plain arrays too keeps one structure.
  return optax.GradientTransformationExtraArgs(
      init=lambda params: tx.init(nnx.as_pure(params)), update=tx.update)


class ParameterEmaState(NamedTuple):
  """The moving average of the parameters (the parameters' tree)."""

  ema: Any


def parameter_ema(decay: float) -> optax.GradientTransformationExtraArgs:
  """Tracks ema <- decay * ema + (1 - decay) * (params + updates).

  Passes the updates through unchanged. Inside `apply_if_finite`, a skipped
  step leaves the average alone. Starts at the initial parameters (as TRM's
  EMA helper does), in float32 whatever the parameters' dtype.
  """

  def init(params):
    # A copy, never the parameter's own buffer (the train step donates both).
    return ParameterEmaState(jax.tree.map(
        lambda p: jnp.array(p, jnp.float32, copy=True), params))

  def update(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("parameter_ema needs the parameters: call "
                       "tx.update(updates, state, params).")
    ema = jax.tree.map(
        lambda e, p, u: decay * e + (1 - decay) * (p + u).astype(jnp.float32),
        state.ema, params, updates)
    return updates, ParameterEmaState(ema)

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------ state readers


def ema_params(opt_state) -> Optional[Any]:
  """The parameters' moving average in a `make_optimizer` state (arrays in
  the parameters' tree, float32), or None if it keeps none."""
  found = [x for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, ParameterEmaState))
           if isinstance(x, ParameterEmaState)]
  if not found:
    return None
  return jax.tree.map(_value, found[0].ema,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def _finite_state(opt_state) -> optax.ApplyIfFiniteState:
  found = [x for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ApplyIfFiniteState))
           if isinstance(x, optax.ApplyIfFiniteState)]
  if not found:
    raise ValueError("No optax.apply_if_finite state in this optimizer state; "
                     "was it built by make_optimizer?")
  return found[0]


def _value(x) -> jax.Array:
  return x[...] if isinstance(x, nnx.Variable) else jnp.asarray(x)


def skipped_updates(opt_state) -> jax.Array:
  """Total steps skipped for non-finite gradients (int32 scalar).

  Args:
    opt_state: the state of a `make_optimizer` transformation, plain or as
      held by `nnx.Optimizer.opt_state`.
  """
  return _value(_finite_state(opt_state).total_notfinite)


def consecutive_skipped(opt_state) -> jax.Array:
  """Non-finite gradients in a row up to now (0 after a finite one)."""
  return _value(_finite_state(opt_state).notfinite_count)


def group_sizes(params, head_keys: Sequence[str] = ("head",)
                ) -> Mapping[str, int]:
  """Parameter count per label, for logging the optimiser split."""
  sizes = {label: 0 for label in LABELS}
  for label, x in zip(jax.tree.leaves(param_labels(params, head_keys)),
                      jax.tree.leaves(params)):
    sizes[label] += int(math.prod(jnp.shape(x)))
  return sizes
