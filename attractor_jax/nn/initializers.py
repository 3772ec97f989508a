"""Initialisers and logical axis names for parameters.

Every parameter carries logical axis names (MaxText style: "embed", "heads",
"head_dim", "mlp", "vocab", "layers"); a rules table in the parallel package
maps them to mesh axes. They are metadata only: nothing is sharded at
construction.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = jax.nn.initializers.Initializer


def with_axes(init: Initializer, names: Sequence[str | None]) -> Initializer:
  """Attaches logical axis names to an initialiser (no eager sharding)."""
  return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def truncated_normal(std: float) -> Initializer:
  """Normal truncated at two standard deviations, with std `std`."""
  # jax's truncated_normal takes the std of the untruncated normal.
  return jax.nn.initializers.truncated_normal(stddev=std / 0.87962566103423978)


def orthogonal(scale: float = 1.0, column_axis: int = -1) -> Initializer:
  """Orthogonal rows/columns times `scale` (for square-ish projections)."""
  return jax.nn.initializers.orthogonal(scale=scale, column_axis=column_axis)


def scaled_zero(scale: float = 0.0, std: float = 0.02) -> Initializer:
  """Output projections: normal with std `std * scale`; scale 0 gives zeros.

  Zero output projections make every residual branch start as the identity,
  so a deep stack (and the attractor head's map) starts well conditioned.
  """
  if scale == 0.0:
    return jax.nn.initializers.zeros
  return truncated_normal(std * scale)


def make_param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
               names: Sequence[str | None], dtype=jnp.float32) -> nnx.Param:
  """An nnx.Param initialised by `init` and annotated with axis `names`."""
  if len(names) != len(shape):
    raise ValueError(f"{len(names)} axis names {tuple(names)} for a parameter "
                     f"of shape {tuple(shape)}.")
  return nnx.Param(with_axes(init, names)(rngs.params(), tuple(shape), dtype))
