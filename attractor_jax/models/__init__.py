"""Models: the Attractor LM and its baselines, built from a config.

Every kind is an entry of `attractor_jax.models.registry`, which says what it
supports and names its config class (`AttractorLMConfig`, `GPTConfig`,
`LoopedConfig`, `DEQConfig`, subclasses of `ModelConfig`);
`build_model(config)` builds `config.kind`; `parameter_count(config)` counts
its parameters from shapes alone.
"""

from __future__ import annotations

import jax
from flax import nnx

from attractor_jax.models import registry
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.models.config import DEQConfig
from attractor_jax.models.config import GPTConfig
from attractor_jax.models.config import LoopedConfig
from attractor_jax.models.config import MODEL_KINDS
from attractor_jax.models.config import ModelConfig
from attractor_jax.models.lm_common import LMOutput

_LM_ENTRIES = (
    registry.ModelEntry(
        AttractorLMConfig.KIND, AttractorLMConfig,
        "attractor_jax.models.attractor_lm", "AttractorLM",
        features={registry.DEPTH_SWEEP, registry.CACHED_DECODING,
                  registry.SOLVER_STATS},
        sweep_depth=lambda config: config.solve.max_iter),
    registry.ModelEntry(GPTConfig.KIND, GPTConfig, "attractor_jax.models.gpt",
                        "GPT"),
    # A looped model trains at a sampled depth, up to twice its mean depth.
    registry.ModelEntry(
        LoopedConfig.KIND, LoopedConfig, "attractor_jax.models.looped",
        "Looped",
        features={registry.DEPTH_SWEEP, registry.TRAIN_KEY},
        sweep_depth=lambda config: 2 * config.mean_depth),
    registry.ModelEntry(
        DEQConfig.KIND, DEQConfig, "attractor_jax.models.deq", "DEQ",
        features={registry.DEPTH_SWEEP, registry.SOLVER_STATS,
                  registry.TRAIN_KEY},
        sweep_depth=lambda config: config.solve.max_iter),
)
for _entry in _LM_ENTRIES:
  registry.register(_entry)
assert set(MODEL_KINDS) == {e.kind for e in _LM_ENTRIES}


def model_class(kind: str) -> type:
  """The nnx.Module class of a model kind."""
  return registry.entry(kind).model_class()


def build_model(config, *, rngs: nnx.Rngs) -> nnx.Module:
  """Instantiates the model that `config.kind` names."""
  return model_class(config.kind)(config, rngs=rngs)


def parameter_count(config) -> int:
  """Parameters of the model `config` describes, from shapes only (nothing is
  allocated or initialised)."""
  model = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  return sum(leaf.size for leaf in
             jax.tree.leaves(nnx.state(model, nnx.Param)))
