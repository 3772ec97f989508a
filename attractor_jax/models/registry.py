"""The model registry: one entry per model kind, with what the kind supports.

Code outside the models asks the registry (`supports(kind, feature)`,
`sweep_depth(config)`) instead of testing kind names, so a new kind is one
`register` call away:

    register(ModelEntry("attractor", AttractorLMConfig,
                        "attractor_jax.models.attractor_lm", "AttractorLM",
                        features={DEPTH_SWEEP, CACHED_DECODING, SOLVER_STATS},
                        sweep_depth=lambda config: config.solve.max_iter))

Each kind has its own config class, whose `KIND` is the kind's name (one
name per model, one class per name); `config_for_kind(kind, **fields)` builds
it. Modules are imported on first use, so building one kind does not import
the others.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

from attractor_jax import errors

# Features a kind may declare.
DEPTH_SWEEP = "depth_sweep"          # a test-time depth (solver steps, loops)
CACHED_DECODING = "cached_decoding"  # init_cache / forward_cached
SOLVER_STATS = "solver_stats"        # its outputs carry SolverStats
HALTING = "halting"                  # a learned halting head (reasoners)
# Has a training mode that draws random numbers: called with train=True and
# a PRNG key in training (a looped model's sampled depths, a DEQ's Jacobian
# penalty probes).
TRAIN_KEY = "train_key"
FEATURES = (DEPTH_SWEEP, CACHED_DECODING, SOLVER_STATS, HALTING, TRAIN_KEY)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """How to build one model kind, and what it supports.

  Attributes:
    kind: the name configs use (`config.kind`).
    config_class: the dataclass of its settings; its `KIND` (if set) is
      `kind`.
    module, class_name: where its nnx.Module lives.
    features: a subset of `FEATURES`.
    sweep_depth: the largest test-time depth of a config (its training
      depth), for kinds with DEPTH_SWEEP.
  """

  kind: str
  config_class: type
  module: str
  class_name: str
  features: frozenset = frozenset()
  sweep_depth: Optional[Callable[[object], int]] = None

  def __post_init__(self):
    unknown = set(self.features) - set(FEATURES)
    if unknown:
      raise ValueError(f"Unknown feature(s) {sorted(unknown)} of model kind "
                       f"{self.kind!r}; expected some of {FEATURES}.")
    if (DEPTH_SWEEP in self.features) != (self.sweep_depth is not None):
      raise ValueError(f"Model kind {self.kind!r}: a depth sweep needs "
                       "sweep_depth, and sweep_depth needs DEPTH_SWEEP.")
    declared = getattr(self.config_class, "KIND", None)
    if declared and declared != self.kind:
      raise ValueError(f"Model kind {self.kind!r}: its config class "
                       f"{self.config_class.__name__} is for kind "
                       f"{declared!r}.")
    object.__setattr__(self, "features", frozenset(self.features))

  def model_class(self) -> type:
    return getattr(importlib.import_module(self.module), self.class_name)


_ENTRIES: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
  """Adds a kind (a kind registered twice is an error)."""
  if entry.kind in _ENTRIES and _ENTRIES[entry.kind] != entry:
    raise ValueError(f"Model kind {entry.kind!r} is already registered.")
  _ENTRIES[entry.kind] = entry
  return entry


def kinds() -> tuple[str, ...]:
  return tuple(_ENTRIES)


def entry(kind: str) -> ModelEntry:
  """The registry entry of `kind`.

  Raises:
    errors.ConfigError: an unknown kind (the message lists the known ones).
  """
  if kind not in _ENTRIES:
    raise errors.ConfigError(f"Unknown model kind {kind!r}; expected one of "
                             f"{', '.join(_ENTRIES)}.")
  return _ENTRIES[kind]


def config_for_kind(kind: str, **fields):
  """The config of a model kind: its registered config class with `fields`.

  Raises:
    errors.ConfigError: an unknown kind, or a value the config refuses.
  """
  return entry(kind).config_class(kind=kind, **fields)


def supports(kind: str, feature: str) -> bool:
  """Whether models of `kind` declare `feature` (one of FEATURES)."""
  if feature not in FEATURES:
    raise ValueError(f"Unknown feature {feature!r}; expected one of "
                     f"{FEATURES}.")
  return feature in entry(kind).features


def sweep_depth(config) -> int:
  """The largest test-time depth of `config`'s model (its training depth).

  Raises:
    ValueError: the kind has no depth to sweep.
  """
  found = entry(config.kind)
  if found.sweep_depth is None:
    raise ValueError(f"A {config.kind!r} model has a fixed depth: there is "
                     "no depth to sweep.")
  return int(found.sweep_depth(config))
