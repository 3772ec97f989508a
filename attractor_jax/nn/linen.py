"""The Linen wrappers under their old name: see `attractor_jax.linen`.

Prefer `from attractor_jax import linen as attractor_linen`: this module's
name clashes with the usual `from flax import linen as nn`.
"""

# pylint: disable=unused-import
from attractor_jax.linen import attractor_head
from attractor_jax.linen import attractor_head_linen
from attractor_jax.linen import attractor_lm_linen
from attractor_jax.linen import language_model_linen
from attractor_jax.linen import to_linen
from attractor_jax.linen import ToLinen
