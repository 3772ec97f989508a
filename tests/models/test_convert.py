"""Importing public PyTorch checkpoints: names, layouts, and a numpy reference.

The synthetic checkpoint has the public code's parameter names and shapes for
a tiny config; a numpy forward written in the public layout (adjacent-pair
rotary, weightless QK-norm after the rotary, ReLU^2 MLP, sigmoid gates times
gamma_max) is the reference our converted model must reproduce.
"""

import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from absl import flags
from safetensors import numpy as safetensors_np

from attractor_jax import convert
from attractor_jax import models
from attractor_jax.models import torch_import

PUBLIC = dict(  # public AttractorConfig field names, tiny sizes
    name="attractor-tiny", block_size=16, vocab_size=64, padding_multiple=64,
    n_embd=32, num_attention_heads=2, num_key_value_heads=2,
    intermediate_size=64, bias=False, tie_embeddings=True,
    architecture_class_name="Attractor",
    block_class_name="TransformerPreNormBlock", norm_class_name="RMSNorm",
    norm_eps=1e-5, mlp_class_name="BaseMLP", nonlin_name="ReLU2",
    qk_norm=True, logit_softcap=None, n_backbone_layers=1, n_fp_blocks=1,
    solver="anderson", max_iter=30, min_iter=0, tol=1e-5, anderson_m=5,
    anderson_beta=1.0, backward_type="onestep", adjoint_grad_clip=None,
    layer_scale_init=0.3, gamma_max=0.75, init_strategy="scaled-zero",
    rope_settings=dict(use_rope=True, rope_condense_ratio=1, rope_base=50_000))
TORCH_RMS_EPS = float(np.finfo(np.float32).eps)  # F.rms_norm's default eps
D, H, HD, MLP, V = 32, 2, 16, 64, 64


def public_tensors(seed=0, n_kv=H, lm_head=True, rope_base=50_000.0):
  """A random public state dict (float32), with its buffer and tied head."""
  rng = np.random.default_rng(seed)

  def w(*shape, std=0.2):
    return (std * rng.standard_normal(shape)).astype(np.float32)

  t = {"transformer.wte.weight": w(V, D, std=1.0),
       "transformer.ln_f.weight": 1 + w(D, std=0.1)}
  for prefix in ("transformer.prelude.0.", "transformer.core_block.0."):
    t.update({prefix + "norm_1.weight": 1 + w(D, std=0.1),
              prefix + "norm_2.weight": 1 + w(D, std=0.1),
              prefix + "attn.c_q.weight": w(H * HD, D),
              prefix + "attn.c_k.weight": w(n_kv * HD, D),
              prefix + "attn.c_v.weight": w(n_kv * HD, D),
              prefix + "attn.c_proj.weight": w(D, H * HD),
              prefix + "mlp.fc.weight": w(MLP, D),
              prefix + "mlp.proj.weight": w(D, MLP)})
  t["transformer.core_block.0.raw_gamma_attn"] = w(D, std=1.0) - 1
  t["transformer.core_block.0.raw_gamma_mlp"] = w(D, std=1.0) - 1
  if lm_head:
    t["lm_head.weight"] = t["transformer.wte.weight"].copy()
  inv = 1.0 / rope_base ** (np.arange(0, HD, 2, dtype=np.float32) / HD)
  ang = np.outer(np.arange(16, dtype=np.float32), inv)
  t["freqs_cis"] = np.stack([np.cos(ang), np.sin(ang)], -1)[None, :, None]
  return t


# ------------------------------------------- numpy reference, public layout


def rms(x, weight, eps):
  y = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)
  return y if weight is None else y * weight


def rotary_adjacent_pairs(x, theta):
  b, t, h, hd = x.shape
  ang = np.arange(t)[:, None] / theta ** (np.arange(0, hd, 2) / hd)
  cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
  re, im = x.reshape(b, t, h, hd // 2, 2)[..., 0], x.reshape(
      b, t, h, hd // 2, 2)[..., 1]
  return np.stack([re * cos - im * sin, im * cos + re * sin], -1).reshape(
      x.shape)


def ref_block(x, t, prefix, gamma_max=None):
  p = {k[len(prefix):]: v.astype(np.float64) for k, v in t.items()
       if k.startswith(prefix)}
  b, s, _ = x.shape
  h = rms(x, p["norm_1.weight"], 1e-5)
  q = (h @ p["attn.c_q.weight"].T).reshape(b, s, H, HD)
  k = (h @ p["attn.c_k.weight"].T).reshape(b, s, -1, HD)
  v = (h @ p["attn.c_v.weight"].T).reshape(b, s, -1, HD)
  q, k = rotary_adjacent_pairs(q, 50_000.0), rotary_adjacent_pairs(k, 50_000.0)
  q, k = rms(q, None, TORCH_RMS_EPS), rms(k, None, TORCH_RMS_EPS)
  k, v = np.repeat(k, H // k.shape[2], 2), np.repeat(v, H // v.shape[2], 2)
  scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(HD)
  scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhts,bshd->bthd", probs, v).reshape(b, s, D)
  attn = out @ p["attn.c_proj.weight"].T
  if gamma_max is not None:
    attn = attn * gamma_max / (1 + np.exp(-p["raw_gamma_attn"]))
  x = x + attn
  hidden = rms(x, p["norm_2.weight"], 1e-5) @ p["mlp.fc.weight"].T
  mlp = (0.5 * np.maximum(hidden, 0) ** 2) @ p["mlp.proj.weight"].T
  if gamma_max is not None:
    mlp = mlp * gamma_max / (1 + np.exp(-p["raw_gamma_mlp"]))
  return x + mlp


def ref_proposal(tokens, t, emb_scale=1.0):
  x = t["transformer.wte.weight"].astype(np.float64)[tokens] * emb_scale
  return ref_block(x, t, "transformer.prelude.0.")


def ref_map(y, c, t, gamma_max):
  """Public f(y, c) = FPHead(y + c) - y."""
  return ref_block(y + c, t, "transformer.core_block.0.", gamma_max) - y


def ref_logits(y, t, logit_scale=1.0):
  x = rms(y, t["transformer.ln_f.weight"].astype(np.float64), 1e-5)
  return x @ t["transformer.wte.weight"].astype(np.float64).T * logit_scale


def converted_model(tensors, **kwargs):
  overrides = kwargs.pop("overrides", {})
  config = torch_import.config_from_public(PUBLIC, **overrides)
  params = torch_import.convert_state_dict(tensors, config, **kwargs)
  model = models.build_model(config, rngs=nnx.Rngs(1))
  torch_import.load_into_model(model, params)
  return model, params, config


@functools.lru_cache(maxsize=None)
def reference_case(rope="interleaved", n_kv=H, emb_scale=1.0, logit_scale=1.0,
                   gate_max=0.75):
  """(public tensors, converted model); built once per case (model init is
  the slow part of these tests on CPU)."""
  t = public_tensors(seed=3, n_kv=n_kv)
  model, _, _ = converted_model(
      t, public_gamma_max=0.75, embedding_scale=emb_scale,
      logit_scale=logit_scale,
      overrides=dict(rope_convention=rope, gate_max=gate_max, gate_init=0.3))
  return t, model


TOKENS = np.array([[1, 5, 9, 2, 63, 0, 7, 7], [3, 3, 40, 11, 12, 60, 1, 2]])


# ------------------------------------------------------------------- tests


def test_config_from_public_preset():
  config = torch_import.config_from_public(
      torch_import.PUBLIC_PRESETS["attractor-small-140m"])
  assert (config.vocab_size, config.dim, config.num_heads, config.mlp_dim,
          config.num_layers, config.head_layers) == (32768, 1024, 8, 4096, 7,
                                                     1)
  assert config.rope_theta == 50_000 and config.rope_convention == "interleaved"
  assert config.qk_norm and config.mlp == "relu2" and config.tie_embeddings
  assert config.gate_max == 0.75 and 0 < config.gate_init < 0.75
  assert (config.solve.max_iter, config.solve.min_iter, config.solve.tol,
          config.solve.backward) == (64, 6, 3e-4, "onestep")
  large = torch_import.config_from_public(
      torch_import.PUBLIC_PRESETS["attractor-large-770m"])
  assert large.solve.backward == "implicit"
  assert large.solve.backward_solver == "anderson"
  assert large.solve.mixing == 0.96 and large.solve.onestep_clip == 2.0
  with pytest.raises(ValueError, match="bias"):
    torch_import.config_from_public(dict(PUBLIC, bias=True))


def test_key_equalities():
  t, model = reference_case()
  config = torch_import.config_from_public(PUBLIC)
  params = torch_import.convert_state_dict(t, config)
  attn = model.backbone[0].attn
  wq, wk = np.asarray(attn.wq[...]), np.asarray(attn.wk[...])
  cq = t["transformer.prelude.0.attn.c_q.weight"]
  ck = t["transformer.prelude.0.attn.c_k.weight"]
  for h in range(H):
    np.testing.assert_array_equal(wq[:, h, :], cq[h * HD:(h + 1) * HD].T)
    np.testing.assert_array_equal(wk[:, h, :], ck[h * HD:(h + 1) * HD].T)
  np.testing.assert_array_equal(
      np.asarray(attn.wo[...]).reshape(H * HD, D),
      t["transformer.prelude.0.attn.c_proj.weight"].T)
  np.testing.assert_array_equal(np.asarray(model.embed.embedding[...]),
                                t["transformer.wte.weight"])
  np.testing.assert_array_equal(np.asarray(attn.q_norm.scale[...]),
                                np.ones(HD))
  block = model.head.blocks[0]
  for ours, theirs in ((block.attn_gate, "raw_gamma_attn"),
                       (block.mlp_gate, "raw_gamma_mlp")):
    raw = t["transformer.core_block.0." + theirs]
    np.testing.assert_array_equal(np.asarray(ours.raw[...]), raw)  # same max
    np.testing.assert_allclose(np.asarray(ours.value),
                               0.75 / (1 + np.exp(-raw)), rtol=1e-6)
  assert "lm_head" not in params


@pytest.mark.parametrize("rope,n_kv,emb_scale,logit_scale,gate_max", [
    ("interleaved", H, 1.0, 1.0, 0.75),
    ("half", 1, 2.0, 0.5, 0.75),      # permuted q/k, GQA, folded scales
    ("interleaved", H, 1.0, 1.0, 1.0),  # public gamma_max 0.75 -> ours 1.0
])
def test_matches_public_reference(rope, n_kv, emb_scale, logit_scale,
                                  gate_max):
  t, model = reference_case(rope, n_kv, emb_scale, logit_scale, gate_max)
  tokens = jnp.asarray(TOKENS)
  c_ref = ref_proposal(TOKENS, t, emb_scale)               # backbone output c
  c = np.asarray(model.propose(tokens))
  np.testing.assert_allclose(c, c_ref, rtol=1e-4, atol=1e-4)

  y = c_ref + np.random.default_rng(0).standard_normal(c_ref.shape)
  f = model.head.map(jnp.asarray(y, jnp.float32), jnp.asarray(c))
  np.testing.assert_allclose(np.asarray(f), ref_map(y, c_ref, t, 0.75),
                             rtol=1e-4, atol=1e-4)          # head map f(y; c)

  logits0 = np.asarray(model(tokens, max_iter=0).logits)  # decode c directly
  np.testing.assert_allclose(logits0, ref_logits(c_ref, t, logit_scale),
                             rtol=1e-4, atol=2e-4)


def test_gated_mlp_split_and_wrapper_prefix():
  config = torch_import.config_from_public(
      dict(PUBLIC, mlp_class_name="GatedMLP", nonlin_name="SiLU"))
  assert config.mlp == "swiglu"
  t = public_tensors()
  for prefix in ("transformer.prelude.0.", "transformer.core_block.0."):
    t[prefix + "mlp.fc.weight"] = np.random.default_rng(1).standard_normal(
        (2 * MLP, D)).astype(np.float32)
  t = {"_orig_mod." + k: v for k, v in t.items()}    # torch.compile names
  params = torch_import.convert_state_dict(t, config)
  fc = t["_orig_mod.transformer.prelude.0.mlp.fc.weight"]
  mlp = params["backbone"][0]["mlp"]
  np.testing.assert_array_equal(mlp["w_gate"], fc[:MLP].T)  # silu(.) side
  np.testing.assert_array_equal(mlp["w_in"], fc[MLP:].T)


def test_tied_head_absent_is_fine_and_differing_head_fails():
  config = torch_import.config_from_public(PUBLIC)
  with_head = torch_import.convert_state_dict(public_tensors(), config)
  without = torch_import.convert_state_dict(public_tensors(lm_head=False),
                                            config)
  np.testing.assert_array_equal(with_head["embed"]["embedding"],
                                without["embed"]["embedding"])
  t = public_tensors()
  t["lm_head.weight"] = t["lm_head.weight"] + 1
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    converted_model(t)


def test_unknown_and_missing_names_are_all_listed():
  t = public_tensors()
  t["transformer.extra.weight"] = np.zeros(3, np.float32)
  t["transformer.coda.0.norm_1.weight"] = np.zeros(D, np.float32)
  del t["transformer.core_block.0.raw_gamma_mlp"]
  del t["transformer.prelude.0.mlp.fc.weight"]
  with pytest.raises(ValueError) as info:
    converted_model(t)
  msg = str(info.value)
  assert ("2 unknown name(s) ['transformer.coda.0.norm_1.weight', "
          "'transformer.extra.weight']") in msg
  assert ("2 missing name(s) ['transformer.core_block.0.raw_gamma_mlp', "
          "'transformer.prelude.0.mlp.fc.weight']") in msg


def test_wrong_shapes_list_expected_and_got():
  t = public_tensors()
  t["transformer.prelude.0.mlp.proj.weight"] = np.zeros((D, MLP + 1),
                                                         np.float32)
  t["transformer.ln_f.weight"] = np.zeros((D + 2,), np.float32)
  with pytest.raises(ValueError) as info:
    converted_model(t)
  msg = str(info.value)
  assert "2 shape mismatch(es)" in msg
  assert "transformer.ln_f.weight: expected (32,), got (34,)" in msg
  assert ("transformer.prelude.0.mlp.proj.weight: expected (32, 64), got "
          "(32, 65)") in msg


def test_rope_theta_and_gate_range_are_checked():
  with pytest.raises(ValueError, match="rope_theta"):
    converted_model(public_tensors(rope_base=10_000.0))
  t = public_tensors()
  t["transformer.core_block.0.raw_gamma_attn"][0] = 8.0   # gate ~0.75
  with pytest.raises(ValueError, match="exceed our gate_max"):
    converted_model(t, public_gamma_max=0.75,
                    overrides=dict(gate_max=0.5, gate_init=0.3))


def test_load_into_model_reports_mismatches():
  t, model = reference_case()
  params = torch_import.convert_state_dict(t, model.config,
                                           public_gamma_max=0.75)
  params["embed"]["embedding"] = params["embed"]["embedding"][:-1]
  with pytest.raises(ValueError, match="embedding"):
    torch_import.load_into_model(model, params)
  del params["embed"]
  with pytest.raises(ValueError, match="missing"):
    torch_import.load_into_model(model, params)


def test_cli_end_to_end_and_restore(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  t, expected = reference_case()
  t = dict(t)
  del t["lm_head.weight"]
  checkpoint = str(tmp_path / "model.safetensors")
  safetensors_np.save_file(t, checkpoint)
  with open(tmp_path / "config.json", "w") as f:   # found beside the file
    json.dump(dict(PUBLIC, layer_scale_init=0.3), f)
  out = tmp_path / "out"
  try:
    flags.FLAGS(["convert", f"--checkpoint={checkpoint}", f"--output={out}"])
    convert.main([])
  finally:
    flags.FLAGS.unparse_flags()

  with open(out / "config.json") as f:
    config = torch_import.config_from_dict(json.load(f))
  assert config == expected.config
  abstract = nnx.eval_shape(lambda: models.build_model(config,
                                                       rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(str(out / "params"), abstract_state)
  flat_got = dict(nnx.to_flat_state(restored))
  flat_want = dict(nnx.to_flat_state(nnx.state(expected)))
  assert flat_got.keys() == flat_want.keys()
  for path, var in flat_want.items():
    np.testing.assert_array_equal(np.asarray(flat_got[path][...]),
                                  np.asarray(var[...]), err_msg=str(path))
  model = nnx.merge(graphdef, restored)
  logits = model(jnp.asarray(TOKENS), max_iter=0).logits
  np.testing.assert_allclose(np.asarray(logits),
                             ref_logits(ref_proposal(TOKENS, t), t),
                             rtol=1e-4, atol=2e-4)
