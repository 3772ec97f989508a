"""Multi-head self-attention that honours `causal` and segment ids everywhere.

The mask is always built here from the sequence index (causality) and segment
ids, and passed to `jax.nn.dot_product_attention` explicitly, so no backend
path can drop it. Positions only rotate queries and keys (rotary), and
rotary can be switched off (`rope_theta=None`).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.nn import initializers
from attractor_jax.nn import norms
from attractor_jax.nn import rotary
from attractor_jax.nn.dense import dense
from attractor_jax.nn.kv_cache import KVCache


def attention_mask(q_len: int, kv_len: int, *, causal: bool,
                   q_segment_ids: Optional[jax.Array] = None,
                   kv_segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """Boolean mask `[batch or 1, 1, q_len, kv_len]`: True where a query may look.

  The queries are the last `q_len` of the `kv_len` keys in sequence order
  (self-attention: q_len == kv_len; cached decoding: the new tokens after
  kv_len - q_len cached slots). Causal: a key later in the sequence than the
  query is hidden. The order is the index along the sequence axis, never the
  values of `positions` (those only rotate queries and keys), so no choice of
  positions can turn causality off. Segments: a query sees only keys of its
  own segment (packed documents stay apart).
  """
  if not (isinstance(q_len, int) and isinstance(kv_len, int)):
    raise TypeError(
        "attention_mask takes the query and key lengths (ints); causality "
        "follows the sequence index, not positions. Got "
        f"{type(q_len).__name__} and {type(kv_len).__name__}.")
  if q_len > kv_len:
    raise ValueError(f"q_len {q_len} > kv_len {kv_len}: the queries must be "
                     "the last q_len keys.")
  mask = jnp.ones((1, q_len, kv_len), bool)
  if causal:
    mask &= jnp.tril(jnp.ones((q_len, kv_len), bool), k=kv_len - q_len)
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Pass segment ids for both queries and keys, or neither.")
  if q_segment_ids is not None:
    mask = mask & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])
  return mask[:, None]


_MASKED = -1e30    # a logit no softmax weight survives (float32 logits)
# Causal self-attention splits the queries into blocks of at least this many
# tokens (at most _MAX_QUERY_BLOCKS blocks); each block attends only to the
# keys up to its own end.
_MIN_QUERY_BLOCK = 64
_MAX_QUERY_BLOCKS = 4


def _heads_major_attend(q, k, v, mask) -> jax.Array:
  """Softmax attention on `[b, heads, t, d]` operands, float32 logits.

  Heads-major operands make both products plain batched matmuls: XLA:CPU
  took up to twice as long for the same products with the heads axis
  between sequence and features (cpu_forms_benchmark.py).
  """
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("bnqh,bnkh->bnqk", q, k,
                      preferred_element_type=jnp.float32)
  logits = jnp.where(mask, logits, _MASKED)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bnqk,bnkh->bnqh", weights, v)


def _heads_major(*arrays):
  return tuple(jnp.swapaxes(a, 1, 2) for a in arrays)


def attend(q, k, v, mask) -> jax.Array:
  """Softmax attention; q `[b, t, heads, d]`, k/v `[b, s, heads, d]`.

  Logits and softmax are float32 whatever the activations' dtype. Written
  out rather than `jax.nn.dot_product_attention`, whose XLA backward took
  26 ms where this one takes 15 (8 x 256 tokens, 4 heads of 64, CPU).
  """
  return jnp.swapaxes(_heads_major_attend(*_heads_major(q, k, v), mask), 1, 2)


def _query_blocks(seq: int) -> int:
  blocks = _MAX_QUERY_BLOCKS
  while blocks > 1 and (seq % blocks or seq // blocks < _MIN_QUERY_BLOCK):
    blocks //= 2
  return blocks


def causal_self_attend(q, k, v, segment_ids: Optional[jax.Array] = None
                       ) -> jax.Array:
  """Causal self-attention computed in blocks of queries.

  Block i of the queries sees only the keys up to its own end, so most of
  the scores that causality hides are never computed: with 4 blocks, 10/16
  of the score matrix. Forward and backward on 8 x 256 tokens take half the
  time of the whole matrix (experiments/benchmarks/cpu_forms_benchmark.py);
  alone, two halves are slightly faster, but in the public-cpu training
  step (experiments/benchmarks/lm_step_benchmark.py) four blocks were 1-2%
  faster. Equal to `attend` with the full causal mask.
  """
  seq = q.shape[1]
  blocks = _query_blocks(seq)
  q, k, v = _heads_major(q, k, v)
  size = seq // blocks
  outputs = []
  for block in range(blocks):
    start, end = block * size, (block + 1) * size
    segments = (None, None) if segment_ids is None else (
        segment_ids[:, start:end], segment_ids[:, :end])
    mask = attention_mask(size, end, causal=True, q_segment_ids=segments[0],
                          kv_segment_ids=segments[1])
    outputs.append(_heads_major_attend(
        q[:, :, start:end], k[:, :, :end], v[:, :, :end], mask))
  return jnp.swapaxes(jnp.concatenate(outputs, axis=2), 1, 2)


class Attention(nnx.Module):
  """Multi-head attention with rotary embeddings and optional QK-norm.

  QK-norm RMS-normalises each head's queries and keys with epsilon
  `qk_norm_eps` (default: `norm_eps`). `rope_theta=None` switches rotary
  embeddings off: positions are then not used at all, and attention over the
  sequence is permutation-equivariant (sets, graph nodes).
  """

  def __init__(self, dim: int, num_heads: int, *, head_dim: Optional[int] = None,
               qk_norm: bool = False,
               rope_theta: Optional[float] = 10000.0,
               rope_convention: str = "half", norm_eps: float = 1e-5,
               qk_norm_eps: Optional[float] = None,
               init_std: float = 0.02, out_init_scale: float = 0.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if head_dim is None:
      if dim % num_heads:
        raise ValueError(f"width {dim} is not divisible by {num_heads} heads.")
      head_dim = dim // num_heads
    if rope_theta is not None and not rope_theta > 0:
      raise ValueError(f"rope_theta must be > 0 (or None: no rotary); got "
                       f"{rope_theta}.")
    if rope_convention not in rotary.CONVENTIONS:
      raise ValueError(f"Unknown rotary convention {rope_convention!r}; "
                       f"expected one of {rotary.CONVENTIONS}.")
    self.num_heads, self.head_dim = num_heads, head_dim
    self.rope_theta, self.rope_convention = rope_theta, rope_convention
    self.dtype = dtype
    init = initializers.truncated_normal(init_std)
    qkv_shape, qkv_axes = (dim, num_heads, head_dim), ("embed", "heads",
                                                        "head_dim")
    self.wq = initializers.make_param(rngs, init, qkv_shape, qkv_axes,
                                      param_dtype)
    self.wk = initializers.make_param(rngs, init, qkv_shape, qkv_axes,
                                      param_dtype)
    self.wv = initializers.make_param(rngs, init, qkv_shape, qkv_axes,
                                      param_dtype)
    self.wo = initializers.make_param(
        rngs, initializers.scaled_zero(out_init_scale, init_std),
        (num_heads, head_dim, dim), ("heads", "head_dim", "embed"),
        param_dtype)
    self.q_norm = nnx.data(None)
    self.k_norm = nnx.data(None)
    if qk_norm:
      eps = norm_eps if qk_norm_eps is None else qk_norm_eps
      self.q_norm = norms.RMSNorm(head_dim, eps=eps, axis_name="head_dim",
                                  param_dtype=param_dtype, rngs=rngs)
      self.k_norm = norms.RMSNorm(head_dim, eps=eps, axis_name="head_dim",
                                  param_dtype=param_dtype, rngs=rngs)

  def project_qkv(self, x: jax.Array, positions: Optional[jax.Array]):
    """Queries, keys and values of x, with QK-norm and rotary applied.

    `positions` (int `[batch, seq]`) is read only by rotary embeddings.
    """
    x = x.astype(self.dtype)
    q, k, v = (dense(x, w[...].astype(self.dtype))
               for w in (self.wq, self.wk, self.wv))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if self.rope_theta is not None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
      sin, cos = rotary.rotary_angles(positions, self.head_dim,
                                      self.rope_theta)
      q = rotary.apply_rotary(q, sin, cos, self.rope_convention)
      k = rotary.apply_rotary(k, sin, cos, self.rope_convention)
    return q, k, v

  def project_out(self, out: jax.Array) -> jax.Array:
    return dense(out, self.wo[...].astype(self.dtype), contract=2)

  def __call__(self, x: jax.Array, *, causal: bool,
               positions: Optional[jax.Array] = None,
               segment_ids: Optional[jax.Array] = None) -> jax.Array:
    """Self-attention over x `[batch, seq, dim]`.

    Args:
      x: the input.
      causal: hide tokens later in the sequence (decoders) or not (puzzle
        models); by sequence index, whatever `positions` holds.
      positions: int `[batch, seq]` for rotary embeddings; default 0..seq-1.
      segment_ids: int `[batch, seq]`; tokens attend only within a segment.
    """
    if x.ndim != 3:
      raise ValueError(f"Attention expects [batch, seq, dim]; got {x.shape}.")
    q, k, v = self.project_qkv(x, positions)
    if causal:
      return self.project_out(causal_self_attend(q, k, v, segment_ids))
    seq = x.shape[1]
    mask = attention_mask(seq, seq, causal=False,
                          q_segment_ids=segment_ids, kv_segment_ids=segment_ids)
    return self.project_out(attend(q, k, v, mask))

  def attend_cached(self, x: jax.Array, positions: jax.Array, cache: KVCache,
                    *, causal: bool = True):
    """Attention of new tokens x over the cached keys plus their own.

    Args:
      x: `[batch, new, dim]`, the tokens after the cached ones.
      positions: int `[batch, new]` (rotary).
      cache: keys and values of earlier tokens (not modified here).
      causal: mask later tokens among the new ones (by sequence index); the
        valid cached slots are all earlier, so always visible.

    Returns:
      The attention output and the new tokens' (keys, values), for the caller
      to append to the cache once they are final.
    """
    q, k, v = self.project_qkv(x, positions)
    keys = jnp.concatenate([cache.k.astype(k.dtype), k], axis=1)
    values = jnp.concatenate([cache.v.astype(v.dtype), v], axis=1)
    valid = jnp.concatenate(
        [cache.valid(), jnp.ones((x.shape[1],), bool)])[None, None, None, :]
    mask = attention_mask(x.shape[1], keys.shape[1], causal=causal) & valid
    return self.project_out(attend(q, keys, values, mask)), (k, v)
