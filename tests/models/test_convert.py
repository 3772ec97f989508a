"""Importing public PyTorch checkpoints: names, layouts, and a numpy reference.

The synthetic checkpoint has the public code's parameter names and shapes for
a tiny config; a numpy forward written in the public layout (adjacent-pair
rotary, weightless QK-norm after the rotary with torch's default epsilon,
ReLU^2 MLP, sigmoid gates times gamma_max, the public solvers) is the
reference our converted model must reproduce.
"""

import functools
import json
import math
import pathlib
import struct
import sys
import types

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


def public_fpi(f, y0, max_iter):
  """The public fixed-point iteration without early stopping: f^max_iter."""
  y = y0
  for _ in range(max_iter):
    y = f(y)
  return y


def public_anderson(f, y0, max_iter, m=5, beta=1.0, lam=1e-4):
  """The public Anderson solve without early stopping (float64).

  Iterates x0 = y0, x1 = f(x0), then x_k mixes the last min(k, m) pairs
  (x_i, f(x_i)) with weights alpha minimising ||sum alpha_i (f(x_i) - x_i)||
  (ridge lam, sum alpha = 1); returns f of the last iterate after max_iter
  evaluations of f.
  """
  xs, fs = [y0], [f(y0)]
  xs.append(fs[0])
  fs.append(f(xs[1]))
  for k in range(2, max_iter):
    x_hist, f_hist = xs[-min(k, m):], fs[-min(k, m):]
    g = np.stack([(b - a).reshape(a.shape[0], -1)
                  for a, b in zip(x_hist, f_hist)], 1)       # [batch, n, dim]
    n = g.shape[1]
    system = np.zeros((g.shape[0], n + 1, n + 1))
    system[:, 0, 1:] = system[:, 1:, 0] = 1.0
    system[:, 1:, 1:] = g @ g.transpose(0, 2, 1) + lam * np.eye(n)
    rhs = np.zeros((g.shape[0], n + 1))
    rhs[:, 0] = 1.0
    alpha = np.linalg.solve(system, rhs[..., None])[:, 1:, 0]
    mix = lambda hist: np.einsum("bn,nb...->b...", alpha, np.stack(hist))
    xs.append(beta * mix(f_hist) + (1 - beta) * mix(x_hist))
    fs.append(f(xs[-1]))
  return fs[-1]


def converted_model(tensors, **kwargs):
  overrides = kwargs.pop("overrides", {})
  public = dict(PUBLIC, **kwargs.pop("public", {}))
  config = torch_import.config_from_public(public, **overrides)
  params = torch_import.convert_state_dict(tensors, config, **kwargs)
  model = models.build_model(config, rngs=nnx.Rngs(1))
  torch_import.load_into_model(model, params)
  return model, params, config


@functools.lru_cache(maxsize=None)
def reference_case(rope="interleaved", n_kv=H, emb_scale=1.0, logit_scale=1.0,
                   gate_max=0.75, public=()):
  """(public tensors, converted model); built once per case (model init is
  the slow part of these tests on CPU). `public`: changed public fields."""
  t = public_tensors(seed=3, n_kv=n_kv)
  model, _, _ = converted_model(
      t, public_gamma_max=0.75, embedding_scale=emb_scale,
      logit_scale=logit_scale, public=dict(public),
      overrides=dict(rope_convention=rope, gate_max=gate_max, gate_init=0.3))
  return t, model


def max_rel(got, want):
  """max |got - want| / max |want|."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


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
  assert config.qk_norm_eps == TORCH_RMS_EPS and config.norm_eps == 1e-5
  # Public min_iter 6 counts evaluations; ours counts steps after the first.
  assert (config.solve.max_iter, config.solve.min_iter, config.solve.tol,
          config.solve.backward) == (64, 5, 3e-4, "onestep")
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
@pytest.mark.heavy
def test_matches_public_reference(rope, n_kv, emb_scale, logit_scale,
                                  gate_max):
  t, model = reference_case(rope, n_kv, emb_scale, logit_scale, gate_max)
  tokens = jnp.asarray(TOKENS)
  c_ref = ref_proposal(TOKENS, t, emb_scale)               # backbone output c
  c = np.asarray(model.propose(tokens))
  # With the public QK-norm epsilon only float32 rounding is left: ~2.5e-7
  # (with our 1e-5 it was ~2.1e-6).
  assert max_rel(c, c_ref) < 1e-6

  y = c_ref + np.random.default_rng(0).standard_normal(c_ref.shape)
  f = model.head.map(jnp.asarray(y, jnp.float32), jnp.asarray(c))
  assert max_rel(f, ref_map(y, c_ref, t, 0.75)) < 1e-6    # head map f(y; c)

  logits0 = np.asarray(model(tokens, max_iter=0).logits)  # decode c directly
  assert max_rel(logits0, ref_logits(c_ref, t, logit_scale)) < 1e-6


def test_the_public_qk_norm_epsilon_is_what_closes_the_gap():
  t, model = reference_case()
  c_ref = ref_proposal(TOKENS, t)
  ours_eps, _, _ = converted_model(
      t, public_gamma_max=0.75,
      overrides=dict(qk_norm_eps=1e-5, gate_max=0.75, gate_init=0.3))
  before = max_rel(ours_eps.propose(jnp.asarray(TOKENS)), c_ref)
  after = max_rel(model.propose(jnp.asarray(TOKENS)), c_ref)
  assert before > 1e-6 > after
  assert model.config.qk_norm_eps == TORCH_RMS_EPS
  bf16 = torch_import.config_from_public(PUBLIC, dtype="bfloat16")
  assert bf16.qk_norm_eps == 2.0 ** -7     # torch's eps for bf16 activations


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


@pytest.mark.heavy
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


# --------------------------------------------------- solver steps (iterations)


@pytest.mark.heavy
@pytest.mark.parametrize("solver", ["fpi", "anderson"])
def test_public_max_iter_n_is_our_max_iter_n(solver):
  """Both outputs use the same N evaluations of f (ours spends one more on
  the returned state's residual); with N - 1 ours would lag one step."""
  n = 4
  t, model = reference_case(public=(("solver", solver), ("max_iter", n),
                                    ("min_iter", 0), ("tol", 1e-12)))
  assert model.config.solve.max_iter == n
  assert model.config.solve.solver == {"fpi": "picard",
                                       "anderson": "anderson"}[solver]
  c_ref = ref_proposal(TOKENS, t)
  public_solve = public_fpi if solver == "fpi" else public_anderson
  y_ref = public_solve(lambda y: ref_map(y, c_ref, t, 0.75), c_ref, n)
  c = model.propose(jnp.asarray(TOKENS))
  y, stats = model.head(c)
  assert int(stats.num_f_evals) == n + 1
  y_short, _ = model.head(c, max_iter=n - 1)
  logits = model.unembed(y, model.embed)
  if solver == "fpi":      # exactly f^N(c), up to float32 rounding
    assert max_rel(y, y_ref) < 1e-6 < 1e-4 < max_rel(y_short, y_ref)
    assert max_rel(logits, ref_logits(y_ref, t)) < 1e-6
  else:                    # the public returns f(x_last), ours its mixed x_N
    assert 3 * max_rel(y, y_ref) < max_rel(y_short, y_ref)
    assert max_rel(logits, ref_logits(y_ref, t)) < 1e-3


def test_min_iter_maps_to_the_same_first_iterate_that_may_stop():
  def solve(**public):
    return torch_import.config_from_public(dict(PUBLIC, **public)).solve
  # Anderson tests convergence from its third evaluation (our step 2) on.
  assert solve(solver="anderson", max_iter=30, min_iter=0).min_iter == 2
  assert solve(solver="anderson", max_iter=30, min_iter=6).min_iter == 5
  assert solve(solver="fpi", max_iter=30, min_iter=0).min_iter == 0
  assert solve(solver="fpi", max_iter=30, min_iter=6).min_iter == 5
  assert solve(solver="fpi", max_iter=3, min_iter=9).min_iter == 2
  short = solve(solver="anderson", max_iter=2, min_iter=0)   # public: fpi
  assert (short.solver, short.max_iter, short.min_iter) == ("picard", 2, 0)


# ----------------------------------------------- scales from init_strategy


def test_scales_follow_the_public_init_strategy():
  d = PUBLIC["n_embd"]
  scales = lambda **cfg: torch_import.public_scales(dict(PUBLIC, **cfg))
  assert scales(init_strategy="scaled-zero") == (1.0, 1.0)
  assert scales(init_strategy=None) == (1.0, 1.0)            # public "scaled"
  assert scales(init_strategy="takase") == (math.sqrt(d), 1.0)
  assert scales(init_strategy="takase-scaled") == pytest.approx(
      (math.sqrt(d), math.sqrt(2 / 5) / math.sqrt(d)))
  for name in ("llama-by-dim-ls", "scaled-and-logit-scale", "shaped",
               "noci-anagnostidis", "deep-scale-simple", "deep-scale-full"):
    assert scales(init_strategy=name) == pytest.approx((1.0, d ** -0.5))
  with pytest.raises(ValueError, match="cannot be derived"):
    scales(init_strategy="my-own-init")
  assert torch_import.public_scales(
      dict(PUBLIC, init_strategy="my-own-init"), embedding_scale=2.0,
      logit_scale=0.5) == (2.0, 0.5)
  with pytest.raises(ValueError, match="contradicts"):
    torch_import.public_scales(PUBLIC, logit_scale=0.5)      # scaled-zero: 1
  with pytest.raises(ValueError, match="contradicts"):
    scales(init_strategy="takase", init=dict(embedding_scale=1.0))


def test_takase_scaled_checkpoint_matches_the_reference():
  t = public_tensors(seed=3)
  public = dict(PUBLIC, init_strategy="takase-scaled")
  config, params = torch_import.convert_public(t, public)
  model = models.build_model(config, rngs=nnx.Rngs(1))
  torch_import.load_into_model(model, params)
  emb, logit = math.sqrt(D), math.sqrt(2 / 5) / math.sqrt(D)
  c_ref = ref_proposal(TOKENS, t, emb)
  tokens = jnp.asarray(TOKENS)
  assert max_rel(model.propose(tokens), c_ref) < 1e-6
  assert max_rel(model(tokens, max_iter=0).logits,
                 ref_logits(c_ref, t, logit)) < 1e-6


# ------------------------------------------------------------ public presets

# The public configs (attractor/configs/attractor/*.py), as published.
PUBLIC_FACTS = {
    "attractor-small-140m": dict(
        n_embd=1024, num_attention_heads=8, num_key_value_heads=8,
        intermediate_size=4096, n_backbone_layers=7, n_fp_blocks=1,
        max_iter=64, min_iter=6, tol=3e-4, anderson_beta=1.0,
        backward_type="onestep", backward_max_iter=64, backward_min_iter=6,
        backward_tol=3e-4, adjoint_grad_clip=None, layer_scale_init=0.75,
        gamma_max=0.75),
    "attractor-medium-370m": dict(
        n_embd=1280, num_attention_heads=10, num_key_value_heads=10,
        intermediate_size=5120, n_backbone_layers=15, n_fp_blocks=2,
        max_iter=64, min_iter=8, tol=2e-4, anderson_beta=1.0,
        backward_type="onestep", backward_max_iter=64, backward_min_iter=6,
        backward_tol=2e-4, adjoint_grad_clip=None, layer_scale_init=0.75,
        gamma_max=1.0),
    "attractor-large-770m": dict(
        n_embd=1280, num_attention_heads=10, num_key_value_heads=10,
        intermediate_size=5120, n_backbone_layers=35, n_fp_blocks=2,
        max_iter=32, min_iter=6, tol=1.5e-4, anderson_beta=0.96,
        backward_type="anderson", backward_max_iter=32, backward_min_iter=6,
        backward_tol=1.5e-4, adjoint_grad_clip=2.0, layer_scale_init=0.73,
        gamma_max=0.9),
    "attractor-xlarge-1_3b": dict(
        n_embd=1536, num_attention_heads=12, num_key_value_heads=12,
        intermediate_size=6144, n_backbone_layers=23, n_fp_blocks=3,
        max_iter=64, min_iter=8, tol=1e-4, anderson_beta=1.0,
        backward_type="onestep", backward_max_iter=64, backward_min_iter=8,
        backward_tol=1e-4, adjoint_grad_clip=None, layer_scale_init=0.5,
        gamma_max=1.0),
}
PUBLIC_SHARED_FACTS = dict(
    block_size=2048, vocab_size=32768, padding_multiple=64, bias=False,
    tie_embeddings=True, architecture_class_name="Attractor",
    block_class_name="TransformerPreNormBlock", norm_class_name="RMSNorm",
    norm_eps=1e-5, mlp_class_name="BaseMLP", nonlin_name="ReLU2",
    qk_norm=True, logit_softcap=None, solver="anderson", anderson_m=5,
    init_strategy="scaled-zero")


@pytest.mark.parametrize("name", sorted(PUBLIC_FACTS))
def test_public_presets_are_the_published_configs(name):
  preset = torch_import.PUBLIC_PRESETS[name]
  for key, value in dict(PUBLIC_SHARED_FACTS, **PUBLIC_FACTS[name]).items():
    assert preset[key] == value, (name, key)
  assert preset["rope_settings"]["rope_base"] == 50_000
  assert set(torch_import.PUBLIC_PRESETS) == set(PUBLIC_FACTS)


# --------------------------------------------------------- checkpoint files


def test_a_pytorch_checkpoint_is_refused_with_the_conversion_line(tmp_path):
  for name, content in (("pytorch_model.bin", b"PK\x03\x04 zip archive"),
                        ("model.pt", b"\x80\x02 pickle"),
                        ("weights.safetensors", b"PK\x03\x04 zip archive")):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
      torch_import.read_checkpoint(str(path))
    assert torch_import.TORCH_TO_SAFETENSORS in str(info.value)
  (tmp_path / "config.json").write_text(json.dumps(PUBLIC))
  with pytest.raises(ValueError, match="pytorch_model.bin"):
    convert.run(str(tmp_path / "pytorch_model.bin"), str(tmp_path / "out"))
  junk = tmp_path / "junk.safetensors"
  junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00notjs")
  with pytest.raises(ValueError, match="not a safetensors file"):
    torch_import.read_checkpoint(str(junk))


def test_the_conversion_line_runs(tmp_path, monkeypatch):
  """Runs TORCH_TO_SAFETENSORS's program against stand-ins for torch and
  safetensors.torch (neither is installed here) that keep numpy arrays."""

  class Tensor(np.ndarray):
    def to(self, dtype, copy=False):
      assert dtype == "float32" and copy
      return np.array(self, np.float32).view(Tensor)

    def contiguous(self):
      return np.ascontiguousarray(self)

  shared = np.arange(6, dtype=np.float16).reshape(2, 3).view(Tensor)
  state = {"transformer.wte.weight": shared, "lm_head.weight": shared}
  fake_torch = types.SimpleNamespace(
      float32="float32",
      load=lambda path, map_location, weights_only: (
          state if (path, map_location, weights_only)
          == ("in.bin", "cpu", True) else None))
  fake_st = types.ModuleType("safetensors.torch")
  fake_st.save_file = safetensors_np.save_file
  monkeypatch.setitem(sys.modules, "torch", fake_torch)
  monkeypatch.setitem(sys.modules, "safetensors.torch", fake_st)
  line = torch_import.TORCH_TO_SAFETENSORS
  docs = pathlib.Path(__file__).resolve().parents[2] / "docs"
  assert line in (docs / "checkpoint_import.md").read_text()
  program = line[line.index('"') + 1:line.rindex('"')]
  out = str(tmp_path / "out.safetensors")
  monkeypatch.setattr(sys, "argv", ["-c", "in.bin", out])
  exec(compile(program, "<TORCH_TO_SAFETENSORS>", "exec"), {})  # pylint: disable=exec-used
  loaded = torch_import.read_checkpoint(out)
  assert set(loaded) == set(state)
  for value in loaded.values():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, np.arange(6).reshape(2, 3))


def test_bfloat16_safetensors_are_read(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  values = np.array([[1.5, -2.0], [0.25, 3.0]], ml_dtypes.bfloat16)
  header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2],
                             "data_offsets": [0, values.nbytes]}}).encode()
  path = tmp_path / "bf16.safetensors"
  path.write_bytes(struct.pack("<Q", len(header)) + header + values.tobytes())
  loaded = torch_import.read_checkpoint(str(path))
  np.testing.assert_array_equal(np.asarray(loaded["w"], np.float32),
                                [[1.5, -2.0], [0.25, 3.0]])


def test_nested_wrapper_prefixes_are_stripped():
  t = {"module._orig_mod." + k: v for k, v in public_tensors().items()}
  config = torch_import.config_from_public(PUBLIC)
  params = torch_import.convert_state_dict(t, config)
  np.testing.assert_array_equal(
      params["embed"]["embedding"],
      t["module._orig_mod.transformer.wte.weight"])
