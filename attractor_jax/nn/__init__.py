"""Flax NNX layers: norms, rotary, attention, MLPs, blocks, the attractor head.

Linen users: see `attractor_jax.linen` (wrappers through flax.nnx.bridge).
"""

from attractor_jax.nn.attention import Attention
from attractor_jax.nn.attention import attention_mask
from attractor_jax.nn.attractor_head import AttractorHead
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.nn.blocks import Block
from attractor_jax.nn.blocks import BlockSpec
from attractor_jax.nn.blocks import ChannelGate
from attractor_jax.nn.kv_cache import KVCache
from attractor_jax.nn.mlp import MLP
from attractor_jax.nn.norms import RMSNorm
