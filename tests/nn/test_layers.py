"""Building blocks: norms, rotary, attention masking, MLPs, blocks, inits,
KV caches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax.nn import attention
from attractor_jax.nn import blocks
from attractor_jax.nn import initializers
from attractor_jax.nn import kv_cache
from attractor_jax.nn import mlp
from attractor_jax.nn import norms
from attractor_jax.nn import rotary
from attractor_jax.nn.dense import dense
from attractor_jax.nn.kv_cache import KVCache

DIM, HEADS, SEQ = 16, 2, 8


def random(shape, seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.PRNGKey(seed), shape).astype(dtype)


def test_rms_norm_computes_in_float32_and_keeps_dtype():
  x = random((2, DIM), dtype=jnp.bfloat16) * 300.0
  norm = norms.RMSNorm(DIM, rngs=nnx.Rngs(0))
  y = norm(x)
  assert y.dtype == jnp.bfloat16
  x32 = np.asarray(x, np.float32)
  expected = x32 / np.sqrt(np.mean(x32 ** 2, -1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, rtol=1e-2)
  assert norms.RMSNorm(DIM, learned_scale=False, rngs=nnx.Rngs(0)).scale is None


@pytest.mark.parametrize("convention", rotary.CONVENTIONS)
def test_rotary_preserves_norm_and_encodes_relative_position(convention):
  q = random((1, 1, 1, DIM), 1)
  k = random((1, 1, 1, DIM), 2)

  def rotate(x, position):
    sin, cos = rotary.rotary_angles(jnp.array([[position]]), DIM, 10000.0)
    return rotary.apply_rotary(x, sin, cos, convention)

  np.testing.assert_allclose(float(jnp.linalg.norm(rotate(q, 7))),
                             float(jnp.linalg.norm(q)), rtol=1e-5)
  score = lambda p, r: float(jnp.sum(rotate(q, p) * rotate(k, r)))
  np.testing.assert_allclose(score(3, 1), score(12, 10), rtol=1e-4)
  assert abs(score(3, 1) - score(3, 2)) > 1e-4


def test_rotary_conventions_differ_by_a_permutation_of_dimensions():
  x = random((1, 1, 1, DIM), 3)
  sin, cos = rotary.rotary_angles(jnp.array([[5]]), DIM, 10000.0)
  # interleaved pairs (2i, 2i+1) are half pairs (i, i + d/2) after reordering.
  to_half = np.concatenate([np.arange(0, DIM, 2), np.arange(1, DIM, 2)])
  interleaved = rotary.apply_rotary(x, sin, cos, "interleaved")
  half = rotary.apply_rotary(x[..., to_half], sin, cos, "half")
  np.testing.assert_allclose(np.asarray(interleaved[..., to_half]),
                             np.asarray(half), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="Unknown rotary convention"):
    rotary.apply_rotary(x, sin, cos, "complex")


def make_attention(**kwargs):
  return attention.Attention(DIM, HEADS, out_init_scale=1.0, rngs=nnx.Rngs(0),
                             **kwargs)


@pytest.mark.parametrize("qk_norm", (False, True))
def test_causal_attention_hides_the_future_and_non_causal_does_not(qk_norm):
  attn = make_attention(qk_norm=qk_norm)
  x = random((2, SEQ, DIM))
  x_changed = x.at[:, 5].add(1.0)
  for causal in (True, False):
    delta = jnp.abs(attn(x_changed, causal=causal) - attn(x, causal=causal))
    delta = np.asarray(jnp.max(delta, axis=(0, 2)))
    if causal:
      assert np.all(delta[:5] == 0.0) and np.all(delta[5:] > 0)
    else:
      assert np.all(delta > 0)


def test_causal_mask_ignores_position_values():
  # Positions only rotate queries and keys: constant (or shuffled) positions
  # must not turn causality off.
  attn = make_attention()
  x = random((2, SEQ, DIM))
  x_changed = x.at[:, 5].add(1.0)
  for positions in (jnp.zeros((2, SEQ), jnp.int32),
                    jnp.broadcast_to(jnp.arange(SEQ)[::-1], (2, SEQ))):
    out = attn(x, causal=True, positions=positions)
    out_changed = attn(x_changed, causal=True, positions=positions)
    delta = np.asarray(jnp.max(jnp.abs(out_changed - out), axis=(0, 2)))
    assert np.all(delta[:5] == 0.0) and np.all(delta[5:] > 0), delta


def test_segment_ids_keep_packed_documents_apart():
  attn = make_attention()
  x = random((1, SEQ, DIM))
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2]])
  x_changed = x.at[:, 1].add(1.0)     # inside the first document
  for causal in (True, False):
    out = attn(x, causal=causal, segment_ids=segments)
    out_changed = attn(x_changed, causal=causal, segment_ids=segments)
    delta = np.asarray(jnp.max(jnp.abs(out_changed - out), axis=(0, 2)))
    assert np.all(delta[3:] == 0.0)
    assert delta[2] > 0
    assert (delta[0] > 0) == (not causal)


def test_attention_mask_rejects_one_sided_segments():
  segments = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="segment ids"):
    attention.attention_mask(4, 4, causal=True, q_segment_ids=segments)


def test_attention_mask_takes_lengths_not_positions():
  positions = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(TypeError, match="sequence index"):
    attention.attention_mask(positions, positions, causal=True)
  # Cached decoding: 2 new queries after 3 earlier keys.
  mask = np.asarray(attention.attention_mask(2, 5, causal=True))[0, 0]
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])


def test_mlp_kinds_compute_their_formulas():
  x = random((2, 3, DIM))
  relu2 = mlp.MLP(DIM, 32, kind="relu2", out_init_scale=1.0, rngs=nnx.Rngs(0))
  hidden = x @ relu2.w_in[...]
  expected = (0.5 * jnp.maximum(hidden, 0) ** 2) @ relu2.w_out[...]
  np.testing.assert_allclose(np.asarray(relu2(x)), np.asarray(expected),
                             rtol=1e-5, atol=1e-7)
  swiglu = mlp.MLP(DIM, 32, kind="swiglu", out_init_scale=1.0,
                   rngs=nnx.Rngs(0))
  expected = ((jax.nn.silu(x @ swiglu.w_gate[...]) * (x @ swiglu.w_in[...]))
              @ swiglu.w_out[...])
  np.testing.assert_allclose(np.asarray(swiglu(x)), np.asarray(expected),
                             rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="Unknown MLP kind"):
    mlp.MLP(DIM, 32, kind="gelu", rngs=nnx.Rngs(0))


def spec(**kwargs):
  return blocks.BlockSpec(DIM, HEADS, 32, out_init_scale=1.0, **kwargs)


def test_gates_start_at_layer_scale_init_and_scale_the_branch():
  block = blocks.Block(spec(gate_max=2.0, gate_init=0.3), rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(block.attn_gate.value), 0.3, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(block.mlp_gate.value), 0.3, rtol=1e-6)
  ungated = blocks.Block(spec(), rngs=nnx.Rngs(0))
  x = random((1, SEQ, DIM))
  # Same weights: the gated attention update is 0.3 times the ungated one.
  gated_attn = block.attn_gate(block.attn(block.attn_norm(x), causal=True))
  plain_attn = ungated.attn(ungated.attn_norm(x), causal=True)
  np.testing.assert_allclose(np.asarray(gated_attn),
                             0.3 * np.asarray(plain_attn), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="gate_init"):
    spec(gate_max=1.0, gate_init=1.5)


def test_pre_and_post_norm_blocks():
  x = random((2, SEQ, DIM))
  pre = blocks.Block(spec(), rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(pre(x)),
                             np.asarray(x + pre.branch(x)), rtol=1e-6)
  post = blocks.Block(spec(norm="post"), rngs=nnx.Rngs(0))
  out = post(x)
  # A post-norm block ends in an RMSNorm with unit scale: unit RMS rows.
  rms = jnp.sqrt(jnp.mean(out ** 2, axis=-1))
  np.testing.assert_allclose(np.asarray(rms), 1.0, rtol=1e-3)
  with pytest.raises(ValueError, match="pre-norm"):
    post.branch(x)


def test_initializers():
  key = jax.random.PRNGKey(0)
  zeros = initializers.scaled_zero()(key, (64, 64))
  assert not np.any(np.asarray(zeros))
  normal = initializers.truncated_normal(0.02)(key, (256, 256))
  np.testing.assert_allclose(float(jnp.std(normal)), 0.02, rtol=0.05)
  assert float(jnp.max(jnp.abs(normal))) <= 0.02 * 2.0 / 0.879 + 1e-6
  q = initializers.orthogonal()(key, (32, 32))
  np.testing.assert_allclose(np.asarray(q.T @ q), np.eye(32), atol=1e-5)


def test_every_block_parameter_has_logical_axis_names():
  block = blocks.Block(spec(gate_max=1.0, qk_norm=True, mlp="swiglu"),
                       rngs=nnx.Rngs(0))
  params = nnx.state(block, nnx.Param)
  specs = jax.tree.leaves(nnx.get_partition_spec(params),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  values = jax.tree.leaves(params)
  assert len(specs) == len(values) > 10
  for partition, value in zip(specs, values):
    assert len(partition) == value.ndim
    assert all(isinstance(name, str) for name in partition)


# ------------------------------------------------------------------ KV cache

CACHE_HEADS, HEAD_DIM = 2, 3


def token(position, batch=1, new=1):
  """Keys/values filled with their position, so slots show what was written."""
  positions = position + jnp.broadcast_to(jnp.arange(new), (batch, new))
  k = jnp.broadcast_to(positions[:, :, None, None].astype(jnp.float32),
                       (batch, new, CACHE_HEADS, HEAD_DIM))
  return k, -k, positions


def test_appends_fill_slots_in_order():
  cache = KVCache.empty(1, 4, CACHE_HEADS, HEAD_DIM)
  cache = cache.append(*token(0, new=2))
  cache = cache.append(*token(2))
  assert int(cache.length) == 3 and not bool(cache.overflowed)
  np.testing.assert_array_equal(np.asarray(cache.positions), [[0, 1, 2, 0]])
  np.testing.assert_array_equal(np.asarray(cache.valid()),
                                [True, True, True, False])
  np.testing.assert_array_equal(np.asarray(cache.k[0, :3, 0, 0]), [0, 1, 2])
  kv_cache.check_not_overflowed(cache)      # no error


def test_eager_append_that_does_not_fit_raises_at_once():
  cache = KVCache.empty(1, 4, CACHE_HEADS, HEAD_DIM).append(*token(0, new=3))
  with pytest.raises(ValueError, match="larger max_len"):
    cache.append(*token(3, new=2))
  with pytest.raises(ValueError, match="larger max_len"):
    KVCache.empty(1, 4, CACHE_HEADS, HEAD_DIM).append(*token(0, new=5))


def test_jitted_appends_past_capacity_are_refused_and_flagged():
  append = jax.jit(lambda cache, k, v, p: cache.append(k, v, p))
  cache = KVCache.empty(1, 4, CACHE_HEADS, HEAD_DIM)
  for position in range(6):
    cache = append(cache, *token(position))
    if position == 3:
      assert not bool(cache.overflowed)
  # Before the fix the clamped writes left positions [0, 1, 2, 5].
  np.testing.assert_array_equal(np.asarray(cache.positions), [[0, 1, 2, 3]])
  np.testing.assert_array_equal(np.asarray(cache.k[0, :, 0, 0]), [0, 1, 2, 3])
  np.testing.assert_array_equal(np.asarray(cache.v[0, :, 0, 0]),
                                [0, -1, -2, -3])
  assert int(cache.length) == 4
  assert bool(cache.overflowed)
  with pytest.raises(ValueError, match="overflowed"):
    kv_cache.check_not_overflowed({"backbone": [cache], "head": []})


def test_overflow_flag_is_sticky():
  append = jax.jit(lambda cache, k, v, p: cache.append(k, v, p))
  cache = KVCache.empty(1, 4, CACHE_HEADS, HEAD_DIM)
  cache = append(cache, *token(0, new=3))
  cache = append(cache, *token(3, new=2))      # refused: 3 + 2 > 4
  assert bool(cache.overflowed) and int(cache.length) == 3
  cache = append(cache, *token(5))             # fits, but the flag stays
  assert bool(cache.overflowed)
  assert bool(kv_cache.any_overflowed([KVCache.empty(1, 2, 1, 1), cache]))


def test_append_works_under_x64():
  with jax.enable_x64(True):
    cache = KVCache.empty(2, 4, CACHE_HEADS, HEAD_DIM)
    k, v, positions = token(0, batch=2, new=2)
    assert positions.dtype == jnp.int64
    cache = cache.append(k, v, positions)
    cache = jax.jit(lambda c, k, v, p: c.append(k, v, p))(
        cache, *token(2, batch=2))
    assert cache.positions.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(cache.positions[0]),
                                  [0, 1, 2, 0])
    assert int(cache.length) == 3


def test_qk_norm_eps_defaults_to_norm_eps_and_can_be_set():
  attn = attention.Attention(DIM, HEADS, qk_norm=True, norm_eps=1e-5,
                             rngs=nnx.Rngs(0))
  assert attn.q_norm.eps == attn.k_norm.eps == 1e-5
  spec = blocks.BlockSpec(DIM, HEADS, 32, qk_norm=True, qk_norm_eps=1e-7,
                          out_init_scale=1.0)
  block = blocks.Block(spec, rngs=nnx.Rngs(0))
  assert block.attn.q_norm.eps == block.attn.k_norm.eps == 1e-7
  assert block.attn_norm.eps == block.mlp_norm.eps == 1e-5
  # With tiny queries and keys the epsilon shows in the output.
  default = blocks.Block(dataclasses.replace(spec, qk_norm_eps=None),
                         rngs=nnx.Rngs(0))
  x = random((1, SEQ, DIM))
  tiny = lambda w: w * 1e-3
  for b in (block, default):
    b.attn.wq[...] = tiny(b.attn.wq[...])
    b.attn.wk[...] = tiny(b.attn.wk[...])
  assert not np.allclose(np.asarray(block(x)), np.asarray(default(x)),
                         rtol=1e-4, atol=0)


@pytest.mark.parametrize("x_shape,kernel_shape,contract,spec", [
    ((2, 3, 8), (8, 5), 1, "btd,df->btf"),
    ((2, 3, 8), (8, 2, 4), 1, "btd,dnh->btnh"),
    ((2, 3, 2, 4), (2, 4, 8), 2, "btnh,nhd->btd"),
])
@pytest.mark.heavy
def test_dense_is_the_einsum_and_so_is_its_gradient(x_shape, kernel_shape,
                                                     contract, spec):
  x, kernel = random(x_shape, 1), random(kernel_shape, 2)
  np.testing.assert_allclose(dense(x, kernel, contract=contract),
                             jnp.einsum(spec, x, kernel), rtol=1e-5,
                             atol=1e-6)
  ours = jax.grad(lambda x, k: jnp.sum(dense(x, k, contract=contract) ** 2),
                  argnums=(0, 1))(x, kernel)
  theirs = jax.grad(lambda x, k: jnp.sum(jnp.einsum(spec, x, k) ** 2),
                    argnums=(0, 1))(x, kernel)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dense_rejects_a_kernel_of_other_input_axes():
  with pytest.raises(ValueError, match="does not end in the kernel's input"):
    dense(random((2, 3, 8)), random((4, 5)))


@pytest.mark.parametrize("seq, blocks", [(8, 1), (65, 1), (128, 2),
                                         (192, 2), (256, 4), (1024, 4)])
def test_causal_self_attention_splits_queries_into_blocks_of_64_or_more(
    seq, blocks):
  assert attention._query_blocks(seq) == blocks


@pytest.mark.heavy
@pytest.mark.parametrize("seq", [8, 64, 65, 128, 256])
@pytest.mark.parametrize("packed", [False, True])
def test_causal_self_attention_in_blocks_equals_the_full_mask(seq, packed):
  q, k, v = (random((2, seq, 2, 8), seed) for seed in (1, 2, 3))
  segment_ids = None
  if packed:
    segment_ids = jnp.cumsum(random((2, seq), 4) > 1.2, axis=1)
  mask = attention.attention_mask(seq, seq, causal=True,
                                  q_segment_ids=segment_ids,
                                  kv_segment_ids=segment_ids)
  np.testing.assert_allclose(
      attention.causal_self_attend(q, k, v, segment_ids),
      attention.attend(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_attend_is_softmax_attention_with_float32_logits():
  q, k, v = (random((2, 6, 2, 8), seed, jnp.bfloat16) for seed in (1, 2, 3))
  mask = attention.attention_mask(6, 6, causal=True)
  ours = attention.attend(q, k, v, mask)
  theirs = jax.nn.dot_product_attention(
      q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
      mask=mask)
  assert ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(ours.astype(jnp.float32), theirs, atol=3e-2)
