"""Size-agnostic convolutional reasoners for logical extrapolation.

    ConvReasoner:     x -> encoder -> AttractorHead(residual=[ConvBlock]) ->
                      readout, per-position class logits
    ConvFeedForward:  x -> encoder -> `depth` untied ConvBlocks -> readout

Every layer is a zero-padded ("SAME") convolution over the 1-D string or
2-D grid, with no positions, so one set of weights runs at any size: trained
on 32-bit strings or 9x9 mazes, it reads 512 bits or 33x33 mazes. The
reasoner's map is the head's f(y; c) = c + R(y + c), so the input is
re-injected at every iteration. Solved to a tolerance it is the attractor;
applied a fixed number of times (`iterate`) it is the looped baseline. The
feed-forward stack applies the same recall form with untied blocks; give it
the reasoner's parameter count through `width` and `depth`.

Both are registered model kinds ("conv_reasoner", "conv_feedforward"), so
`models.build_model(config)` builds them and the trainer checkpoints them.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import ClassVar, Optional

import jax
from flax import nnx

from attractor_jax import errors
from attractor_jax.models import registry
from attractor_jax.nn.attractor_head import AttractorHead
from attractor_jax.nn.attractor_head import INJECTIONS
from attractor_jax.nn.attractor_head import SolveConfig

# The test-time solve of the recipe (configs/extrapolation.py): Anderson with
# 5 iterates to tol 1e-3; max_iter is set per test size by the task.
DEFAULT_SOLVE = SolveConfig(solver="anderson", history=5, tol=1e-3,
                            max_iter=100)


@dataclasses.dataclass(frozen=True)
class ConvConfig:
  """What both convolutional models share.

  Attributes:
    kind: the model kind; each subclass accepts only its own.
    ndim: spatial axes: 1 (strings `[batch, n, channels]`) or 2 (grids
      `[batch, h, w, channels]`).
    in_channels: input channels (prefix sums 1, mazes 3).
    num_classes: logits per position.
    width: channels of the state.
    kernel: convolution width (odd, so SAME padding is centred).
    readout_width: hidden channels of the two-convolution readout (None:
      width // 2, at least 1).
  """

  KIND: ClassVar[str] = ""

  kind: str = ""
  ndim: int = 1
  in_channels: int = 1
  num_classes: int = 2
  width: int = 32
  kernel: int = 3
  readout_width: Optional[int] = None

  def __post_init__(self):
    if not self.kind:
      object.__setattr__(self, "kind", self.KIND)
    if self.kind != self.KIND:
      raise errors.ConfigError(f"{type(self).__name__}.kind must be "
                               f"{self.KIND!r}; got {self.kind!r}.")
    for name, least in self._integers().items():
      value = getattr(self, name)
      if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
          or value < least):
        raise errors.ConfigError(
            f"model.{name} must be an integer >= {least}; got {value!r}.")
    if self.ndim not in (1, 2):
      raise errors.ConfigError(f"model.ndim must be 1 or 2; got "
                               f"{self.ndim!r}.")
    if self.kernel % 2 == 0:
      raise errors.ConfigError(f"model.kernel must be odd; got "
                               f"{self.kernel}.")

  def _integers(self) -> dict:
    minimum = dict(in_channels=1, num_classes=2, width=1, kernel=1)
    if self.readout_width is not None:
      minimum["readout_width"] = 1
    return minimum

  @property
  def vocab_size(self) -> int:
    """Classes per position (the trainer's loss limit is a multiple of
    ln of it)."""
    return self.num_classes

  @property
  def hidden_readout(self) -> int:
    return self.readout_width or max(self.width // 2, 1)

  def replace(self, **changes) -> "ConvConfig":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ConvReasonerConfig(ConvConfig):
  """The attractor reasoner.

  Attributes:
    num_blocks: ConvBlocks of the head's residual branch R (2 convolutions
      each), applied in turn once per map application.
    injection: how c enters the map (`attractor_head.INJECTIONS`; the
      recipe's "additive" is f = c + R(y + c)).
    solve: the head's solve (test time, and training in "implicit" mode).
  """

  KIND: ClassVar[str] = "conv_reasoner"

  num_blocks: int = 1
  injection: str = "additive"
  solve: SolveConfig = DEFAULT_SOLVE

  def __post_init__(self):
    super().__post_init__()
    if self.injection not in ("additive", "init_only"):
      raise errors.ConfigError(
          f"model.injection must be additive or init_only (of "
          f"{', '.join(INJECTIONS)}, the ones residual modules take); got "
          f"{self.injection!r}.")
    if not isinstance(self.solve, SolveConfig):
      raise errors.ConfigError("model.solve must be a SolveConfig.")

  def _integers(self) -> dict:
    return dict(super()._integers(), num_blocks=1)


@dataclasses.dataclass(frozen=True)
class ConvFeedForwardConfig(ConvConfig):
  """The feed-forward baseline: `depth` untied ConvBlocks.

  Attributes:
    depth: ConvBlocks applied once each.
  """

  KIND: ClassVar[str] = "conv_feedforward"

  depth: int = 10

  def _integers(self) -> dict:
    return dict(super()._integers(), depth=1)


def _conv(config: ConvConfig, features_in: int, features_out: int,
          rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(features_in, features_out, (config.kernel,) * config.ndim,
                  padding="SAME", rngs=rngs)


class ConvBlock(nnx.Module):
  """x -> conv -> relu -> conv: one residual module (linear output, no
  normalisation; zero padding, so the border is seen as zeros)."""

  def __init__(self, config: ConvConfig, *, rngs: nnx.Rngs,
               width: Optional[int] = None):
    width = width or config.width
    self.conv1 = _conv(config, width, width, rngs)
    self.conv2 = _conv(config, width, width, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv2(jax.nn.relu(self.conv1(x)))


class _EncodeReadout(nnx.Module):
  """The encoder (one convolution) and the two-convolution readout."""

  def _build_ends(self, config: ConvConfig, rngs: nnx.Rngs) -> None:
    self.config = config
    self.encoder = _conv(config, config.in_channels, config.width, rngs)
    self.read_hidden = _conv(config, config.width, config.hidden_readout,
                             rngs)
    self.read_logits = _conv(config, config.hidden_readout,
                             config.num_classes, rngs)

  def encode(self, x: jax.Array) -> jax.Array:
    """c `[batch, *spatial, width]` of inputs `[batch, *spatial, in]`."""
    return self.encoder(x)

  def readout(self, y: jax.Array) -> jax.Array:
    """Logits `[batch, *spatial, num_classes]` of a state."""
    return self.read_logits(jax.nn.relu(self.read_hidden(y)))


class ConvReasoner(_EncodeReadout):
  """encoder -> AttractorHead(residual=[ConvBlock, ...]) -> readout."""

  def __init__(self, config: ConvReasonerConfig, *, rngs: nnx.Rngs):
    self._build_ends(config, rngs)
    self.head = AttractorHead(
        residual=[ConvBlock(config, rngs=rngs)
                  for _ in range(config.num_blocks)],
        solve_config=config.solve, injection=config.injection)

  def __call__(self, x: jax.Array, *, max_iter: Optional[int] = None):
    """(logits, SolverStats): the head solved to its tolerance (at most
    `max_iter` iterations; default the config's)."""
    y, stats = self.head(self.encode(x), max_iter=max_iter)
    return self.readout(y), stats

  def iterate(self, x: jax.Array, count) -> jax.Array:
    """Logits after exactly `count` map applications from c (the looped
    view; no gradient)."""
    return self.readout(self.head.iterate(self.encode(x), count))

  def progressive(self, x: jax.Array, *, key: jax.Array, max_warm: int,
                  steps: int) -> jax.Array:
    """Logits of the head's progressive training forward
    (`AttractorHead.progressive`)."""
    c = self.encode(x)
    y = self.head.progressive(c, key=key, max_warm=max_warm, steps=steps)
    return self.readout(y.astype(c.dtype))


class ConvFeedForward(_EncodeReadout):
  """encoder -> h = c + block_i(h + c) for `depth` untied blocks -> readout."""

  def __init__(self, config: ConvFeedForwardConfig, *, rngs: nnx.Rngs):
    self._build_ends(config, rngs)
    self.layers = nnx.List([ConvBlock(config, rngs=rngs)
                            for _ in range(config.depth)])

  def __call__(self, x: jax.Array, *, max_iter: Optional[int] = None):
    """(logits, None): the stack has no solve (max_iter is ignored)."""
    del max_iter
    c = self.encode(x)
    h = c
    for layer in self.layers:
      h = c + layer(h + c)
    return self.readout(h), None


registry.register(registry.ModelEntry(
    ConvReasonerConfig.KIND, ConvReasonerConfig,
    "attractor_jax.models.reasoning.conv", "ConvReasoner",
    features={registry.SOLVER_STATS}))
registry.register(registry.ModelEntry(
    ConvFeedForwardConfig.KIND, ConvFeedForwardConfig,
    "attractor_jax.models.reasoning.conv", "ConvFeedForward"))

CONFIGS = {config.KIND: config
           for config in (ConvReasonerConfig, ConvFeedForwardConfig)}
