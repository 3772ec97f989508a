"""Import checkpoints of the public PyTorch Attractor code into `AttractorLM`.

The public code (arXiv 2605.12466's release) stores a flat state dict. Names
(prefix P = transformer.; `nn.Linear` weights are [out, in]; H heads, Hkv kv
heads, hd = D / H) and where they go:

  P.wte.weight [V, D]             embed.embedding (times embedding_scale)
  P.ln_f.weight [D]               unembed.norm.scale (x logit_scale / emb_scale)
  lm_head.weight [V, D]           tied: optional, must equal wte, dropped;
                                  untied: unembed.output = W^T
  P.prelude.{i}.<block>           backbone.{i}.<block>
  P.core_block.{j}.<block>        head.blocks.{j}.<block>
  P.core_block.{j}.raw_gamma_attn head.blocks.{j}.attn_gate.raw (same gate)
  P.core_block.{j}.raw_gamma_mlp  head.blocks.{j}.mlp_gate.raw  (same gate)
  freqs_cis [1, T, 1, hd/2, 2]    buffer: checked against rope_theta, dropped

  <block>:
  norm_1.weight [D]               attn_norm.scale
  norm_2.weight [D]               mlp_norm.scale
  attn.c_q.weight [H*hd, D]       attn.wq = W^T as [D, H, hd]
  attn.c_k.weight [Hkv*hd, D]     attn.wk = W^T as [D, Hkv, hd], each kv head
                                  repeated H/Hkv times (GQA grouping)
  attn.c_v.weight [Hkv*hd, D]     attn.wv (as wk)
  attn.c_proj.weight [D, H*hd]    attn.wo = W^T as [H, hd, D]
  mlp.fc.weight [I, D]            mlp.w_in = W^T (GatedMLP [2I, D]: rows [:I]
                                  -> w_gate, rows [I:] -> w_in)
  mlp.proj.weight [D, I]          mlp.w_out = W^T
  (none)                          attn.q_norm.scale, attn.k_norm.scale = 1

Conventions, and what is done about each:
- Rotary: the public code rotates adjacent pairs (2i, 2i+1) of each head
  (complex-multiplication form), i.e. our "interleaved" convention, with the
  same frequencies theta^(-2i/hd). With `config.rope_convention ==
  "interleaved"` the q/k weights load as they are; with "half" the head
  dimensions of wq and wk are permuted (2i -> i, 2i+1 -> i + hd/2), which is
  exact because attention scores are invariant under one permutation applied to
  both q and k and the unit-scale QK-norm is permutation invariant.
  `config_from_public` picks "interleaved".
- QK-norm: the public code applies a weightless RMS norm (torch's default eps)
  after the rotary; ours applies RMSNorm (eps = norm_eps, scale) before it.
  With unit scales the two commute (a rotation keeps each head's norm); only
  the eps differs (1e-5 vs ~1.2e-7): a relative difference ~eps / mean(q^2).
- Gates: public gate = sigmoid(raw_gamma) * gamma_max; ours gate_max *
  sigmoid(raw). We keep the gate VALUES: raw = logit(sigmoid(raw_gamma) *
  gamma_max / gate_max), which is raw_gamma itself when gamma_max == gate_max
  (copied bit for bit). A gate >= our gate_max cannot be represented: error.
- Embedding/logit scales: the public model multiplies embeddings by
  `init.embedding_scale` and logits by `init.logit_scale`. Both are folded
  exactly into the weights: E' = s E and ln_f' = ln_f * logit_scale / s (tied).
  Their values for the released runs are not in the stored public source
  (its `Init` base class is missing); pass them if the checkpoint's config
  names them (`public_scales` reads `embedding_scale` / `logit_scale`).
- RMSNorm: the public norm's learned `weight` multiplies the normalised input
  (no unit offset outside "Gemma"-named configs), like our `scale`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx

from attractor_jax.models.config import ModelConfig
from attractor_jax.nn import attractor_head

# Non-parameter buffers of the public model, ignored (freqs_cis is checked).
PUBLIC_BUFFERS = ("freqs_cis",)
# Wrapper prefixes (torch.compile, DDP) stripped from every name.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")

# Architecture and solver fields of the public LM presets (their configs/).
_PUBLIC_COMMON = dict(
    block_size=2048, vocab_size=32768, padding_multiple=64, bias=False,
    tie_embeddings=True, architecture_class_name="Attractor",
    block_class_name="TransformerPreNormBlock", norm_class_name="RMSNorm",
    norm_eps=1e-5, mlp_class_name="BaseMLP", nonlin_name="ReLU2",
    qk_norm=True, logit_softcap=None, solver="anderson", anderson_m=5)
PUBLIC_PRESETS = {
    "attractor-small-140m": dict(
        _PUBLIC_COMMON, n_embd=1024, num_attention_heads=8,
        intermediate_size=4096, n_backbone_layers=7, n_fp_blocks=1,
        max_iter=64, min_iter=6, tol=3e-4, anderson_beta=1.0,
        backward_type="onestep", backward_max_iter=64, backward_tol=3e-4,
        adjoint_grad_clip=None, layer_scale_init=0.75, gamma_max=0.75),
    "attractor-medium-370m": dict(
        _PUBLIC_COMMON, n_embd=1280, num_attention_heads=10,
        intermediate_size=5120, n_backbone_layers=15, n_fp_blocks=2,
        max_iter=64, min_iter=8, tol=2e-4, anderson_beta=1.0,
        backward_type="onestep", backward_max_iter=64, backward_tol=2e-4,
        adjoint_grad_clip=None, layer_scale_init=0.75, gamma_max=1.0),
    "attractor-large-770m": dict(
        _PUBLIC_COMMON, n_embd=1280, num_attention_heads=10,
        intermediate_size=5120, n_backbone_layers=35, n_fp_blocks=2,
        max_iter=32, min_iter=6, tol=1.5e-4, anderson_beta=0.96,
        backward_type="anderson", backward_max_iter=32, backward_tol=1.5e-4,
        adjoint_grad_clip=2.0, layer_scale_init=0.73, gamma_max=0.9),
    "attractor-xlarge-1_3b": dict(
        _PUBLIC_COMMON, n_embd=1536, num_attention_heads=12,
        intermediate_size=6144, n_backbone_layers=23, n_fp_blocks=3,
        max_iter=64, min_iter=8, tol=1e-4, anderson_beta=1.0,
        backward_type="onestep", backward_max_iter=64, backward_tol=1e-4,
        adjoint_grad_clip=None, layer_scale_init=0.5, gamma_max=1.0),
}


# ----------------------------------------------------------------- config


def _require(cfg: Mapping[str, Any], name: str, allowed, default) -> Any:
  value = cfg.get(name, default)
  if value not in allowed:
    raise ValueError(f"Public config {name}={value!r} is not supported; "
                     f"expected one of {list(allowed)}.")
  return value


def _rope_settings(cfg: Mapping[str, Any]) -> dict:
  rope = dict(use_rope=True, rope_condense_ratio=1, rope_base=50_000)
  rope.update(cfg.get("rope_settings") or {})
  for key, value in cfg.items():
    if key.startswith("rope_settings."):
      rope[key.split(".", 1)[1]] = value
  return rope


def public_scales(public_cfg: Mapping[str, Any]) -> tuple[float, float]:
  """(embedding_scale, logit_scale) named in a public config; 1.0 if absent."""
  init = public_cfg.get("init")
  init = init if isinstance(init, Mapping) else {}
  emb = public_cfg.get("embedding_scale", init.get("embedding_scale", 1.0))
  logit = public_cfg.get("logit_scale", init.get("logit_scale", 1.0))
  return float(emb), float(logit)


def config_from_public(public_cfg: Mapping[str, Any], **overrides
                       ) -> ModelConfig:
  """Our ModelConfig for a public AttractorConfig (its field names).

  Training-only fields (lr scales, init strategy, ...) are ignored; settings
  our model cannot reproduce (biases, clip_qkv, codas, ...) raise ValueError.
  """
  cfg = dict(public_cfg)
  _require(cfg, "architecture_class_name", ("Attractor", "EQLM"), "Attractor")
  _require(cfg, "model_class_name", ("Attractor", "EQLM"), "Attractor")
  _require(cfg, "block_class_name", ("TransformerPreNormBlock",),
           "TransformerPreNormBlock")
  _require(cfg, "norm_class_name", ("RMSNorm",), "LayerNorm")
  for name in ("bias", "qk_bias", "use_abacus", "debias_attention",
               "center_attention"):
    _require(cfg, name, (False,), False)
  _require(cfg, "clip_qkv", (None,), None)
  _require(cfg, "mup_model_scaling_factor", (1,), 1)
  _require(cfg, "n_layers_in_coda", (0,), 0)
  if "Gemma" in str(cfg.get("name", "")):
    raise ValueError("Gemma-style RMSNorm (unit offset) is not supported.")
  mlp_class = _require(cfg, "mlp_class_name", ("BaseMLP", "GatedMLP"),
                       "BaseMLP")
  nonlin = cfg.get("nonlin_name", "GELU")
  kinds = {("BaseMLP", "ReLU2"): "relu2", ("GatedMLP", "SiLU"): "swiglu"}
  if (mlp_class, nonlin) not in kinds:
    raise ValueError(f"Public MLP {mlp_class} with {nonlin} is not supported; "
                     f"supported: {sorted(kinds)}.")
  rope = _rope_settings(cfg)
  if not rope["use_rope"] or rope["rope_condense_ratio"] != 1:
    raise ValueError(f"Public rope settings {rope} are not supported "
                     "(need use_rope=True, rope_condense_ratio=1).")
  if cfg.get("layer_scale_init") is None and "layer_scale_init" in cfg:
    raise ValueError("The public head is ungated (layer_scale_init=None); "
                     "our attractor head needs gates.")

  dim = int(cfg["n_embd"])
  vocab = cfg.get("padded_vocab_size")
  if vocab is None:
    multiple = int(cfg.get("padding_multiple", 512))
    vocab = -(-int(cfg.get("vocab_size", 50254)) // multiple) * multiple
  gate_max = float(cfg.get("gamma_max") or 1.0)
  # The public code clamps the initial gate fraction below 1; so do we.
  gate_init = min(float(cfg.get("layer_scale_init", 0.25)),
                  gate_max * (1.0 - 1e-6))
  backward_type = _require(cfg, "backward_type",
                           ("onestep", "anderson", "picard"), "onestep")
  solver = {"anderson": "anderson", "fpi": "picard"}[
      _require(cfg, "solver", ("anderson", "fpi"), "anderson")]
  max_iter = int(cfg.get("max_iter", 12))
  tol = float(cfg.get("tol", 1e-3))
  solve = attractor_head.SolveConfig(
      solver=solver, history=int(cfg.get("anderson_m", 5)),
      mixing=float(cfg.get("anderson_beta", 1.0)), max_iter=max_iter,
      min_iter=int(cfg.get("min_iter", 0)), tol=tol,
      backward="onestep" if backward_type == "onestep" else "implicit",
      backward_solver="anderson" if backward_type == "anderson" else "picard",
      backward_max_iter=int(cfg.get("backward_max_iter") or max_iter),
      backward_tol=float(cfg.get("backward_tol") or tol),
      onestep_clip=(None if cfg.get("adjoint_grad_clip", 1.0) is None
                    else float(cfg.get("adjoint_grad_clip", 1.0))))
  fields = dict(
      kind="attractor", vocab_size=int(vocab), dim=dim,
      num_heads=int(cfg.get("num_attention_heads", 32)),
      mlp_dim=int(cfg.get("intermediate_size") or 4 * dim),
      num_layers=int(cfg.get("n_backbone_layers",
                             cfg.get("n_layers_in_prelude", 6))),
      head_layers=int(cfg.get("n_fp_blocks",
                              cfg.get("n_layers_in_recurrent_block", 1))),
      mlp=kinds[(mlp_class, nonlin)], norm="pre",
      qk_norm=bool(cfg.get("qk_norm", False)),
      rope_theta=float(rope["rope_base"]), rope_convention="interleaved",
      norm_eps=float(cfg.get("norm_eps", 1e-5)),
      causal=bool(cfg.get("causal", True)), gate_max=gate_max,
      gate_init=gate_init, solve=solve,
      tie_embeddings=bool(cfg.get("tie_embeddings", True)),
      logit_softcap=cfg.get("logit_softcap"))
  fields.update(overrides)
  return ModelConfig(**fields)


# ------------------------------------------------------------ state dict


def _head_dim(config: ModelConfig) -> int:
  return config.dim // config.num_heads


def _rotary_permutation(head_dim: int) -> np.ndarray:
  """Index map taking interleaved pairs (2i, 2i+1) to half pairs (i, i+hd/2)."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def _expected_shapes(config: ModelConfig, kv_rows: Mapping[str, int]
                     ) -> dict[str, tuple[int, ...]]:
  """Public name -> shape, for every parameter `config` needs."""
  d, hd, h = config.dim, _head_dim(config), config.num_heads
  fc_rows = config.mlp_dim * (2 if config.mlp == "swiglu" else 1)
  shapes = {"transformer.wte.weight": (config.vocab_size, d),
            "transformer.ln_f.weight": (d,)}
  if not config.tie_embeddings:
    shapes["lm_head.weight"] = (config.vocab_size, d)
  prefixes = ([f"transformer.prelude.{i}." for i in range(config.num_layers)]
              + [f"transformer.core_block.{j}."
                 for j in range(config.head_layers)])
  for prefix in prefixes:
    shapes.update({
        prefix + "norm_1.weight": (d,), prefix + "norm_2.weight": (d,),
        prefix + "attn.c_q.weight": (h * hd, d),
        prefix + "attn.c_k.weight": (kv_rows.get(prefix, h * hd), d),
        prefix + "attn.c_v.weight": (kv_rows.get(prefix, h * hd), d),
        prefix + "attn.c_proj.weight": (d, h * hd),
        prefix + "mlp.fc.weight": (fc_rows, d),
        prefix + "mlp.proj.weight": (d, config.mlp_dim)})
    if prefix.startswith("transformer.core_block."):
      shapes[prefix + "raw_gamma_attn"] = (d,)
      shapes[prefix + "raw_gamma_mlp"] = (d,)
  return shapes


def _check_freqs_cis(freqs: np.ndarray, config: ModelConfig) -> None:
  hd = _head_dim(config)
  if freqs.ndim != 5 or freqs.shape[-2:] != (hd // 2, 2):
    raise ValueError(f"freqs_cis has shape {freqs.shape}; expected "
                     f"[1, T, 1, {hd // 2}, 2] for head_dim {hd}.")
  steps = min(freqs.shape[1], 256)
  inv_freq = 1.0 / config.rope_theta ** (np.arange(0, hd, 2) / hd)
  angles = np.arange(steps)[:, None] * inv_freq
  want = np.stack([np.cos(angles), np.sin(angles)], -1)
  got = np.asarray(freqs[0, :steps, 0], np.float64)
  atol = 1e-3 if freqs.dtype == np.float32 else 2e-2
  if not np.allclose(got, want, atol=atol):
    raise ValueError("The checkpoint's freqs_cis buffer does not match "
                     f"rope_theta={config.rope_theta} (or positions are "
                     "condensed); set rope_theta to the public rope_base.")


def _gate_raw(raw_gamma: np.ndarray, gamma_max: float, gate_max: float,
              name: str) -> np.ndarray:
  """Our raw with gate_max*sigmoid(raw) == gamma_max*sigmoid(raw_gamma)."""
  if gamma_max == gate_max:
    return raw_gamma
  frac = gamma_max / gate_max / (1.0 + np.exp(-raw_gamma.astype(np.float64)))
  if np.any(frac >= 1.0):
    raise ValueError(f"{name}: gate values up to {frac.max() * gate_max:.4g} "
                     f"exceed our gate_max={gate_max}; raise gate_max.")
  return (np.log(frac) - np.log1p(-frac)).astype(raw_gamma.dtype)


def _convert_block(get, prefix: str, config: ModelConfig, gated: bool,
                   gamma_max: float) -> dict:
  d, hd, h = config.dim, _head_dim(config), config.num_heads

  def heads(weight):                     # [n*hd, D] -> [D, n, hd]
    return weight.T.reshape(d, weight.shape[0] // hd, hd)

  wq, wk, wv = (heads(get(prefix + f"attn.c_{n}.weight")) for n in "qkv")
  rep = h // wk.shape[1]
  wk, wv = np.repeat(wk, rep, axis=1), np.repeat(wv, rep, axis=1)
  if config.rope_convention == "half":
    perm = _rotary_permutation(hd)
    wq, wk = wq[..., perm], wk[..., perm]
  attn = dict(wq=wq, wk=wk, wv=wv,
              wo=get(prefix + "attn.c_proj.weight").T.reshape(h, hd, d))
  if config.qk_norm:
    attn["q_norm"] = dict(scale=np.ones((hd,), np.float32))
    attn["k_norm"] = dict(scale=np.ones((hd,), np.float32))
  fc = get(prefix + "mlp.fc.weight").T
  mlp = dict(w_out=get(prefix + "mlp.proj.weight").T)
  if config.mlp == "swiglu":
    mlp["w_gate"], mlp["w_in"] = fc[:, :config.mlp_dim], fc[:, config.mlp_dim:]
  else:
    mlp["w_in"] = fc
  block = dict(attn_norm=dict(scale=get(prefix + "norm_1.weight")),
               mlp_norm=dict(scale=get(prefix + "norm_2.weight")),
               attn=attn, mlp=mlp)
  if gated:
    for ours, theirs in (("attn_gate", "raw_gamma_attn"),
                         ("mlp_gate", "raw_gamma_mlp")):
      block[ours] = dict(raw=_gate_raw(get(prefix + theirs), gamma_max,
                                       config.gate_max, prefix + theirs))
  return block


def convert_state_dict(tensors: Mapping[str, np.ndarray], config: ModelConfig,
                       *, public_gamma_max: Optional[float] = None,
                       embedding_scale: float = 1.0, logit_scale: float = 1.0
                       ) -> dict:
  """Our AttractorLM parameters (nested dict of numpy arrays) from public ones.

  Args:
    tensors: the public state dict, name -> array (e.g. safetensors.numpy).
    config: our model's config (see `config_from_public`).
    public_gamma_max: the checkpoint's gamma_max (default: config.gate_max).
    embedding_scale, logit_scale: the public `init` scales, folded in.

  Raises:
    ValueError: listing every unknown and missing name, every shape mismatch
      (expected vs got), a tied lm_head that differs from the embedding, a
      freqs_cis that disagrees with rope_theta, or an unrepresentable gate.
  """
  if config.kind != "attractor":
    raise ValueError(f"Public checkpoints load into kind 'attractor'; got "
                     f"{config.kind!r}.")
  if config.norm != "pre":
    raise ValueError("The public blocks are pre-norm; set norm='pre'.")
  tensors = dict(tensors)
  for name in list(tensors):
    for prefix in WRAPPER_PREFIXES:
      if name.startswith(prefix):
        tensors[name[len(prefix):]] = tensors.pop(name)
        break
  buffers = {name: tensors.pop(name) for name in PUBLIC_BUFFERS
             if name in tensors}

  hd = _head_dim(config)
  kv_rows = {}
  for name, value in tensors.items():     # GQA: any kv-head count dividing H
    if name.endswith("attn.c_k.weight") and np.ndim(value) == 2:
      rows = np.shape(value)[0]
      if rows % hd == 0 and rows and config.num_heads % (rows // hd) == 0:
        kv_rows[name[:-len("attn.c_k.weight")]] = rows
  expected = _expected_shapes(config, kv_rows)
  optional = {"lm_head.weight"} if config.tie_embeddings else set()
  unknown = sorted(set(tensors) - set(expected) - optional)
  missing = sorted(set(expected) - set(tensors))
  if unknown or missing:
    raise ValueError(
        f"Public checkpoint does not match the config: {len(unknown)} unknown "
        f"name(s) {unknown}; {len(missing)} missing name(s) {missing}.")
  bad = sorted(
      f"{name}: expected {shape}, got {tuple(np.shape(tensors[name]))}"
      for name, shape in expected.items()
      if tuple(np.shape(tensors[name])) != shape)
  if "lm_head.weight" in optional and "lm_head.weight" in tensors:
    got = tuple(np.shape(tensors["lm_head.weight"]))
    if got != expected["transformer.wte.weight"]:
      bad.append(f"lm_head.weight: expected "
                 f"{expected['transformer.wte.weight']}, got {got}")
  if bad:
    raise ValueError(f"{len(bad)} shape mismatch(es): {bad}")
  if "freqs_cis" in buffers:
    _check_freqs_cis(np.asarray(buffers["freqs_cis"]), config)

  def get(name):
    return np.asarray(tensors[name], np.float32)

  wte = get("transformer.wte.weight")
  if "lm_head.weight" in optional and "lm_head.weight" in tensors:
    if not np.array_equal(get("lm_head.weight"), wte):
      raise ValueError("lm_head.weight differs from transformer.wte.weight "
                       "but config.tie_embeddings is True.")
  gamma_max = config.gate_max if public_gamma_max is None else public_gamma_max
  ln_f = get("transformer.ln_f.weight") * logit_scale
  params = {"embed": {"embedding": wte * embedding_scale}, "unembed": {}}
  if config.tie_embeddings:
    ln_f = ln_f / embedding_scale
  else:
    params["unembed"]["output"] = get("lm_head.weight").T
  params["unembed"]["norm"] = {"scale": ln_f}
  params["backbone"] = {
      i: _convert_block(get, f"transformer.prelude.{i}.", config, False,
                        gamma_max) for i in range(config.num_layers)}
  params["head"] = {"blocks": {
      j: _convert_block(get, f"transformer.core_block.{j}.", config, True,
                        gamma_max) for j in range(config.head_layers)}}
  return params


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def load_into_model(model: nnx.Module, params: Mapping) -> None:
  """Writes `params` (from `convert_state_dict`) into `model`'s parameters.

  Every nnx.Param of the model must be given, with its shape; values are cast
  to the parameter's dtype. Raises ValueError listing mismatches.
  """
  flat_state = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  ours = {path: var for path, var in flat_state}
  given = _flatten(params)
  unknown = sorted(map(str, set(given) - set(ours)))
  missing = sorted(map(str, set(ours) - set(given)))
  if unknown or missing:
    raise ValueError(f"Parameters do not match the model: unknown {unknown}; "
                     f"missing {missing}.")
  bad = sorted(f"{path}: expected {tuple(var.shape)}, got "
               f"{tuple(np.shape(given[path]))}" for path, var in ours.items()
               if tuple(np.shape(given[path])) != tuple(var.shape))
  if bad:
    raise ValueError(f"{len(bad)} shape mismatch(es): {bad}")
  nnx.update(model, nnx.from_flat_state(
      [(path, var.replace(jnp.asarray(given[path], var.dtype)))
       for path, var in flat_state]))


def config_to_dict(config: ModelConfig) -> dict:
  """A JSON-able dict of `config` (inverse: `config_from_dict`)."""
  return dataclasses.asdict(config)


def config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
  values = dict(values)
  if isinstance(values.get("solve"), Mapping):
    values["solve"] = attractor_head.SolveConfig(**values["solve"])
  return ModelConfig(**values)


__all__ = ["PUBLIC_BUFFERS", "PUBLIC_PRESETS", "config_from_dict",
           "config_from_public", "config_to_dict", "convert_state_dict",
           "load_into_model", "public_scales"]
