"""Language models: the Attractor LM and its baselines, built from a config."""

from __future__ import annotations

import importlib

from flax import nnx

from attractor_jax.models.config import MODEL_KINDS
from attractor_jax.models.config import ModelConfig
from attractor_jax.models.lm_common import LMOutput

# kind -> (module, class); imported on use so a kind's module loads only
# when that kind is built.
_MODEL_CLASSES = {
    "attractor": ("attractor_jax.models.attractor_lm", "AttractorLM"),
    "gpt": ("attractor_jax.models.gpt", "GPT"),
    "looped": ("attractor_jax.models.looped", "Looped"),
    "deq": ("attractor_jax.models.deq", "DEQ"),
}


def model_class(kind: str) -> type:
  """The nnx.Module class of a model kind."""
  if kind not in _MODEL_CLASSES:
    raise ValueError(f"Unknown model kind {kind!r}; expected one of "
                     f"{MODEL_KINDS}.")
  module_name, class_name = _MODEL_CLASSES[kind]
  return getattr(importlib.import_module(module_name), class_name)


def build_model(config: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
  """Instantiates the model that `config.kind` names."""
  return model_class(config.kind)(config, rngs=rngs)
