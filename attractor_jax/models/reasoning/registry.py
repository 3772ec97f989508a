"""The puzzle model kinds: config class and model class by name.

The entries live in the package's registry (`attractor_jax.models.registry`),
so `models.build_model` and `registry.supports` know the puzzle kinds too.

    register("trm")(TRMConfig, TRM)
    config = get_config_class("trm")(dim=64)
    model = build(config, nnx.Rngs(0))
"""

from __future__ import annotations

from flax import nnx

from attractor_jax import errors
from attractor_jax.models import registry
from attractor_jax.models.reasoning import config as config_lib


def _sweep_depth(config) -> int:
  return config.sweep_depth


def register(kind: str):
  """Returns `add(config_cls, model_cls)`, which registers them as `kind`
  in the package's model registry (`attractor_jax.models.registry`), with
  the config class's capabilities as the entry's features.

  The config class must name the same kind (its `KIND`). Registering the
  same pair twice is allowed; another pair under a taken name is an error.
  """

  def add(config_cls: type, model_cls: type) -> type:
    if getattr(config_cls, "KIND", None) != kind:
      raise ValueError(f"{config_cls.__name__}.KIND is "
                       f"{getattr(config_cls, 'KIND', None)!r}, not {kind!r}.")
    depth = registry.DEPTH_SWEEP in config_cls.capabilities
    registry.register(registry.ModelEntry(
        kind, config_cls, model_cls.__module__, model_cls.__name__,
        features=config_cls.capabilities,
        sweep_depth=_sweep_depth if depth else None))
    return model_cls

  return add


def kinds() -> tuple[str, ...]:
  """The registered reasoning kinds, in registration order."""
  return tuple(kind for kind in registry.kinds()
               if issubclass(registry.entry(kind).config_class,
                             config_lib.ReasonerConfig))


def _entry(kind: str) -> tuple[type, type]:
  if kind not in kinds():
    raise errors.ConfigError(f"Unknown reasoning model kind {kind!r}; "
                             f"expected one of {', '.join(kinds())}.")
  found = registry.entry(kind)
  return found.config_class, found.model_class()


def get_config_class(kind: str) -> type:
  """The config dataclass of `kind` (errors.ConfigError if unknown)."""
  return _entry(kind)[0]


def get_model_class(kind: str) -> type:
  """The nnx.Module class of `kind` (errors.ConfigError if unknown)."""
  return _entry(kind)[1]


def build(config, rngs: nnx.Rngs) -> nnx.Module:
  """The model of `config.kind`, initialised from `rngs`."""
  config_cls, model_cls = _entry(config.kind)
  if not isinstance(config, config_cls):
    raise errors.ConfigError(
        f"A {config.kind!r} model needs a {config_cls.__name__}; got a "
        f"{type(config).__name__}.")
  return model_cls(config, rngs=rngs)
