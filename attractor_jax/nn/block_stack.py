"""A stack of identical blocks with stacked parameters, run as one scan.

`BlockStack` holds `n` Blocks' parameters on a leading "layers" axis and
applies them with `nnx.scan`, so the traced program (and compile time) does
not grow with depth. Each layer can be rematerialised in the backward pass
with a named policy (`REMAT_POLICIES`); `call_block` applies the same policy
to one Block of a Python-loop stack.

The logical axis names of the parameters get "layers" in front (("layers",
"embed", "mlp"), ...), which the parallel rules map to no mesh axis.

Parameter layouts of a model's layer attribute (`backbone` of an AttractorLM,
`blocks` of a GPT), as pure dicts (`nnx.to_pure_dict`, checkpoints):

    looped:   {"backbone": {0: {"attn": {"wq": [d, h, k]}, ...}, 1: ...}}
    scanned:  {"backbone": {"layers": {"attn": {"wq": [n, d, h, k]}, ...}}}

`stack_layers` converts the first to the second, `unstack_layers` back; both
also convert an optimizer state whose moments mirror the parameters:

    params = block_stack.stack_layers(restored.state["model"], "backbone")
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import errors
from attractor_jax.nn import blocks

LAYERS = "layers"      # the logical name of the stacked axis
# Remat policy names -> jax.checkpoint policies ("none": no remat at all).
REMAT_POLICIES: Mapping[str, Optional[Callable[..., bool]]] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
_METADATA = {nnx.PARTITION_NAME: LAYERS}
ROOT_MARK = "embed"    # the entry that marks a model's root in a layout


def check_remat(name: str) -> str:
  """Returns `name` if it is a remat policy name.

  Raises:
    errors.ConfigError: for any other name (the known ones are listed).
  """
  if not isinstance(name, str) or name not in REMAT_POLICIES:
    raise errors.ConfigError(
        f"Unknown remat policy {name!r}; expected one of "
        f"{', '.join(REMAT_POLICIES)}.")
  return name


def _maybe_remat(fn, remat: str):
  """`fn` under nnx.remat with the named policy ("none": `fn` itself)."""
  if check_remat(remat) == "none":
    return fn
  return nnx.remat(fn, policy=REMAT_POLICIES[remat])


def call_block(block: blocks.Block, x: jax.Array, *, positions=None,
               segment_ids=None, remat: str = "none") -> jax.Array:
  """`block(x, ...)`, rematerialised in the backward pass by `remat`."""
  def apply(block, x):
    return block(x, positions=positions, segment_ids=segment_ids)
  return _maybe_remat(apply, remat)(block, x)


class BlockStack(nnx.Module):
  """`num_layers` Blocks of one spec, parameters stacked, applied by a scan.

  Iterating (or `layer(i)`) gives per-layer Blocks whose parameters are
  slices of the stacked ones: gradients flow through them, but assigning to
  them does not write back. The cached decoding path uses them.
  """

  def __init__(self, spec: blocks.BlockSpec, num_layers: int, *,
               remat: str = "none", rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f"A BlockStack needs num_layers >= 1; got "
                       f"{num_layers}.")
    self.num_layers = num_layers
    self.remat = check_remat(remat)

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_METADATA)
    def make(rngs):
      return blocks.Block(spec, rngs=rngs)

    self.layers = make(rngs)

  def __len__(self) -> int:
    return self.num_layers

  def __call__(self, x: jax.Array, *, positions=None, segment_ids=None
               ) -> jax.Array:
    """Every block in order on x `[batch, seq, dim]` (same shape out)."""
    def body(x, block):
      return block(x, positions=positions, segment_ids=segment_ids)
    scan = nnx.scan(_maybe_remat(body, self.remat), in_axes=(nnx.Carry, 0),
                    out_axes=nnx.Carry, transform_metadata=_METADATA)
    return scan(x, self.layers)

  def layer(self, index: int) -> blocks.Block:
    """A Block holding layer `index`'s parameters (slices, not aliases)."""
    if not -self.num_layers <= index < self.num_layers:
      raise IndexError(f"Layer {index} of a {self.num_layers}-layer stack.")
    graphdef, state = nnx.split(self.layers)
    state = jax.tree.map(lambda x: x[index], state)
    return nnx.merge(graphdef, nnx.spmd.remove_axis(state, 0, _METADATA))

  def __iter__(self) -> Iterator[blocks.Block]:
    return (self.layer(i) for i in range(self.num_layers))


def make_layers(spec: blocks.BlockSpec, num_layers: int, *, scan: bool,
                remat: str = "none", rngs: nnx.Rngs):
  """A BlockStack (`scan`, num_layers >= 1) or an nnx.List of Blocks."""
  check_remat(remat)
  if scan and num_layers:
    return BlockStack(spec, num_layers, remat=remat, rngs=rngs)
  return nnx.List([blocks.Block(spec, rngs=rngs) for _ in range(num_layers)])


def run_layers(layers, x: jax.Array, *, positions=None, segment_ids=None,
               remat: str = "none") -> jax.Array:
  """Applies `make_layers`' result: the scan, or a loop of `call_block`."""
  if isinstance(layers, BlockStack):
    return layers(x, positions=positions, segment_ids=segment_ids)
  for block in layers:
    x = call_block(block, x, positions=positions, segment_ids=segment_ids,
                   remat=remat)
  return x


# ------------------------------------------------------------------ layouts


def _index(key) -> Optional[int]:
  """A list index key (0 or "0", as orbax restores it) as an int, else None."""
  if isinstance(key, bool):
    return None
  if isinstance(key, int):
    return key
  if isinstance(key, str) and key.isdigit():
    return int(key)
  return None


def _is_layer_list(tree) -> bool:
  if not isinstance(tree, Mapping) or not tree:
    return False
  indices = [_index(k) for k in tree]
  return sorted(i for i in indices if i is not None) == list(range(len(tree)))


def _convert(tree, key: str, fn):
  """`tree` with fn applied to `key`'s value in every model root below it.

  A model root is a mapping that holds `key` and "embed" (every LM embeds),
  so the attractor head's own `blocks` are never taken for a GPT's.
  """
  if not isinstance(tree, Mapping):
    return tree
  root = key in tree and ROOT_MARK in tree
  return {k: fn(v) if root and k == key else _convert(v, key, fn)
          for k, v in tree.items()}


def stack_layers(tree: Any, key: str) -> dict:
  """A looped layout's layers stacked as a scanned model's `BlockStack`.

  Args:
    tree: a nested mapping of arrays (`nnx.to_pure_dict` of a model's
      state, a checkpoint's restored state, or a train state with optimizer
      moments); an nnx.State is converted with `to_pure_dict` first.
    key: the model's layer attribute: "backbone" (AttractorLM), "blocks"
      (GPT). In every model root (a mapping holding `key` and "embed": the
      model's parameters, or optimizer moments that mirror them), `key`'s
      value, indexed 0..n-1, becomes {"layers": its layers' leaves stacked
      on a new axis 0}.

  Returns:
    A new nested dict (arrays are stacked, the input is not modified).

  Raises:
    ValueError: no entry named `key` holds a list of layers, or the layers'
      trees differ.
  """
  found = []

  def stack(value):
    if not _is_layer_list(value):
      return value
    layers = [value[k] for k in sorted(value, key=_index)]
    structures = {jax.tree.structure(layer) for layer in layers}
    if len(structures) != 1:
      raise ValueError(f"The layers under {key!r} have different trees.")
    found.append(len(layers))
    return {LAYERS: jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}

  result = _convert(_as_dict(tree), key, stack)
  if not found:
    raise ValueError(f"No list of layers under {key!r} to stack (already "
                     "scanned, or the wrong key: 'backbone' for an "
                     "AttractorLM, 'blocks' for a GPT).")
  return result


def unstack_layers(tree: Any, key: str) -> dict:
  """The inverse of `stack_layers`: {"layers": stacked} -> {0: ..., 1: ...}.

  Raises:
    ValueError: no entry named `key` holds stacked layers.
  """
  found = []

  def unstack(value):
    if not (isinstance(value, Mapping) and set(value) == {LAYERS}):
      return value
    stacked = value[LAYERS]
    count = {x.shape[0] for x in jax.tree.leaves(stacked)}
    if len(count) != 1:
      raise ValueError(f"The stacked layers under {key!r} have different "
                       f"leading sizes {sorted(count)}.")
    found.append(count)
    return {i: jax.tree.map(lambda x, i=i: x[i], stacked)
            for i in range(count.pop())}

  result = _convert(_as_dict(tree), key, unstack)
  if not found:
    raise ValueError(f"No stacked layers under {key!r} to unstack (already "
                     "looped, or the wrong key).")
  return result


def _as_dict(tree: Any) -> Any:
  if isinstance(tree, nnx.State):
    return nnx.to_pure_dict(tree)
  return tree
