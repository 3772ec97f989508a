"""Flattening a batched pytree state into one `[batch, dim]` solver matrix.

Solvers work on a `[batch, dim]` matrix in float32 (float64 under x64),
whatever the user's state looks like: a pytree whose leaves all share the
leading batch axis, in any float dtype. The map itself is always called on the state in its own dtypes, so a
bfloat16 model iterates with float32 solver state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FlatSpec:
  """How to turn a `[batch, dim]` matrix back into the user's pytree."""

  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]
  batch_size: int

  @property
  def sizes(self) -> tuple[int, ...]:
    return tuple(math.prod(s[1:]) for s in self.shapes)

  @property
  def dim(self) -> int:
    return sum(self.sizes)

  def unflatten(self, flat: jax.Array) -> PyTree:
    """Splits `[batch, dim]` back into leaves with their shapes and dtypes."""
    leaves = []
    start = 0
    for shape, dtype, size in zip(self.shapes, self.dtypes, self.sizes):
      leaves.append(flat[:, start:start + size].reshape(shape).astype(dtype))
      start += size
    return jax.tree_util.tree_unflatten(self.treedef, leaves)

  @property
  def solver_dtype(self):
    """float32, or wider when a leaf is wider: never the model's bfloat16."""
    return jnp.result_type(jnp.float32, *self.dtypes)

  def flatten(self, tree: PyTree) -> jax.Array:
    """Flattens a pytree with this spec's structure into `[batch, dim]`."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if treedef != self.treedef:
      raise ValueError(
          f"The map returned a pytree of structure {treedef}, but the state "
          f"has structure {self.treedef}; f(params, y, c) must return a "
          "value shaped like y.")
    for leaf, shape in zip(leaves, self.shapes):
      if tuple(leaf.shape) != shape:
        raise ValueError(
            f"The map returned a leaf of shape {tuple(leaf.shape)} where the "
            f"state has shape {shape}; f(params, y, c) must preserve shapes.")
    return jnp.concatenate(
        [leaf.reshape(self.batch_size, -1).astype(self.solver_dtype)
         for leaf in leaves],
        axis=1)


def flat_spec(tree: PyTree) -> FlatSpec:
  """Describes a batched pytree state; every leaf needs the same batch axis."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if not leaves:
    raise ValueError("The fixed-point state y0 has no array leaves.")
  shapes = tuple(tuple(jnp.shape(leaf)) for leaf in leaves)
  for shape in shapes:
    if len(shape) == 0:
      raise ValueError(
          "Every leaf of the fixed-point state needs a leading batch axis; "
          "got a scalar leaf. Add a batch axis of size 1 for a single example.")
  batch_sizes = {shape[0] for shape in shapes}
  if len(batch_sizes) != 1:
    raise ValueError(
        "Every leaf of the fixed-point state must share the leading batch "
        f"axis; got leaf shapes {list(shapes)}.")
  dtypes = tuple(jnp.result_type(leaf) for leaf in leaves)
  for dtype in dtypes:
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise ValueError(
          f"The fixed-point state must be floating point; got dtype {dtype}.")
  return FlatSpec(treedef, shapes, dtypes, batch_sizes.pop())


def flat_map(f: Callable[..., PyTree], spec: FlatSpec) -> Callable[..., jax.Array]:
  """Wraps f(params, y, c) to map a flat `[batch, dim]` solver state to itself."""

  def wrapped(params, y_flat, c):
    return spec.flatten(f(params, spec.unflatten(y_flat), c))

  return wrapped
