"""A registry of the puzzle model kinds: config class and model class by name.

    register("trm")(TRMConfig, TRM)
    config = get_config_class("trm")(dim=64)
    model = build(config, nnx.Rngs(0))
"""

from __future__ import annotations

from flax import nnx

from attractor_jax import errors

_ENTRIES: dict[str, tuple[type, type]] = {}


def register(kind: str):
  """Returns `add(config_cls, model_cls)`, which registers them as `kind`.

  The config class must name the same kind (its `KIND`). Registering the
  same pair twice is allowed; another pair under a taken name is an error.
  """

  def add(config_cls: type, model_cls: type) -> type:
    if getattr(config_cls, "KIND", None) != kind:
      raise ValueError(f"{config_cls.__name__}.KIND is "
                       f"{getattr(config_cls, 'KIND', None)!r}, not {kind!r}.")
    if _ENTRIES.get(kind, (config_cls, model_cls)) != (config_cls, model_cls):
      raise ValueError(f"Reasoning model kind {kind!r} is already registered.")
    _ENTRIES[kind] = (config_cls, model_cls)
    return model_cls

  return add


def kinds() -> tuple[str, ...]:
  """The registered kinds, in registration order."""
  return tuple(_ENTRIES)


def _entry(kind: str) -> tuple[type, type]:
  if kind not in _ENTRIES:
    raise errors.ConfigError(f"Unknown reasoning model kind {kind!r}; "
                             f"expected one of {', '.join(_ENTRIES)}.")
  return _ENTRIES[kind]


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
