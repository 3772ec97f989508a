"""Puzzle models (Sudoku, Maze): TRM, the Attractor reasoner, a Transformer.

Every kind has the same interface (see `common`): `initial_carry(batch)`,
`model(inputs, carry, puzzle_ids=..., train=...) -> (carry, SegmentOutput)`
for one deep-supervision segment, and `config.max_segments`. `conv` holds
the size-agnostic convolutional reasoners of the extrapolation task (their
own interface: `model(inputs, max_iter=...) -> (logits, stats)`).

    config = presets.get_preset("attractor-reasoner-tiny")
    model = build(config, nnx.Rngs(0))
"""

from attractor_jax.models.reasoning import conv
from attractor_jax.models.reasoning import presets
from attractor_jax.models.reasoning.attractor_reasoner import AttractorReasoner
from attractor_jax.models.reasoning.common import detach
from attractor_jax.models.reasoning.common import ReasonerCarry
from attractor_jax.models.reasoning.common import SegmentOutput
from attractor_jax.models.reasoning.config import AttractorReasonerConfig
from attractor_jax.models.reasoning.config import CAPABILITIES
from attractor_jax.models.reasoning.config import DEPTH_SWEEP
from attractor_jax.models.reasoning.config import HALTING
from attractor_jax.models.reasoning.config import ReasonerConfig
from attractor_jax.models.reasoning.config import SOLVER_STATS
from attractor_jax.models.reasoning.config import TRMConfig
from attractor_jax.models.reasoning.config import TransformerReasonerConfig
from attractor_jax.models.reasoning.registry import build
from attractor_jax.models.reasoning.registry import get_config_class
from attractor_jax.models.reasoning.registry import get_model_class
from attractor_jax.models.reasoning.registry import kinds
from attractor_jax.models.reasoning.registry import register
from attractor_jax.models.reasoning.transformer import TransformerReasoner
from attractor_jax.models.reasoning.trm import TRM

register(TRMConfig.KIND)(TRMConfig, TRM)
register(AttractorReasonerConfig.KIND)(AttractorReasonerConfig,
                                       AttractorReasoner)
register(TransformerReasonerConfig.KIND)(TransformerReasonerConfig,
                                         TransformerReasoner)
