"""Is a checkpoint the one we wrote, and does it fit the model we built?

Two checks behind `checkpoints.Checkpointer.restore`:

- `tree_checksums`: one 32-bit checksum per array, computed on device (no
  host copy of the state) when a checkpoint is saved and again after it is
  restored. A flipped bit, a swapped pair of values or a chunk that tensorstore
  reads back as zeros changes the checksum, so corruption that the file format
  does not detect still cannot restore silently.
- `structure_differences`: the saved tree (paths, shapes, dtypes from orbax's
  metadata) against the tree the current model expects, listing every missing,
  unexpected or reshaped array (MaxText's weight-mismatch check, rather than a
  hand-kept list of config fields).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Odd multiplier of Knuth's multiplicative hash: makes each element's weight
# depend on its position, so permuted values change the checksum.
_POSITION_MULTIPLIER = 2654435761


def path_name(path) -> str:
  """"a/b/0/c" for a jax key path."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (a 64-bit element gives two)."""
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = x.dtype.itemsize
  if width == 8:
    words = lax.bitcast_convert_type(x, jnp.uint32)      # [n, 2]
    return jnp.ravel(words)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
  return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
  words = _as_uint32(x)
  weights = (jnp.arange(words.size, dtype=jnp.uint32)
             * jnp.uint32(_POSITION_MULTIPLIER) + jnp.uint32(1))
  return jnp.sum(words * weights, dtype=jnp.uint32)   # wraps mod 2**32


@jax.jit
def _checksums(leaves: list) -> list:
  return [_checksum(x) for x in leaves]


def tree_checksums(tree: Any) -> dict[str, str]:
  """{path: 8-hex-digit checksum} of every array leaf of `tree`."""
  with_paths = jax.tree_util.tree_leaves_with_path(tree)
  if not with_paths:
    return {}
  sums = jax.device_get(_checksums([jnp.asarray(x) for _, x in with_paths]))
  return {path_name(path): f"{int(s):08x}"
          for (path, _), s in zip(with_paths, sums)}


def checksum_mismatches(saved: Mapping[str, str], tree: Any) -> list[str]:
  """Paths of `tree` whose checksum differs from the `saved` one.

  Paths absent from `saved` (a partial restore reads a subset; checkpoints
  written before checksums existed have none) are not compared.
  """
  current = tree_checksums(tree)
  return sorted(path for path, value in current.items()
                if path in saved and saved[path] != value)


def _shape_dtype(x) -> tuple[tuple[int, ...], str]:
  return tuple(np.shape(x) if not hasattr(x, "shape") else x.shape), str(
      np.dtype(x.dtype))


def structure_differences(saved: Any, target: Any, *,
                          partial: bool = False) -> list[str]:
  """Every way the saved tree and the target tree differ, one line each.

  Args:
    saved: the checkpoint's tree of array metadata (anything with `shape`
      and `dtype` per leaf).
    target: the tree the caller will restore into.
    partial: the target may omit saved arrays (a parameters-only restore).
  """
  saved_leaves = {path_name(p): _shape_dtype(x)
                  for p, x in jax.tree_util.tree_leaves_with_path(saved)}
  target_leaves = {path_name(p): _shape_dtype(x)
                   for p, x in jax.tree_util.tree_leaves_with_path(target)}
  lines = []
  for path in sorted(set(saved_leaves) | set(target_leaves)):
    old, new = saved_leaves.get(path), target_leaves.get(path)
    if old is None:
      lines.append(f"{path}: not in the checkpoint (model expects "
                   f"{new[1]}{list(new[0])})")
    elif new is None:
      if not partial:
        lines.append(f"{path}: in the checkpoint ({old[1]}{list(old[0])}) "
                     "but not in the model")
    elif old != new:
      lines.append(f"{path}: checkpoint has {old[1]}{list(old[0])}, model "
                   f"expects {new[1]}{list(new[0])}")
  return lines
