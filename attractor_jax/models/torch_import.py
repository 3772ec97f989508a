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
- QK-norm: the public code applies a weightless RMS norm after the rotary
  with torch's default eps, finfo(activation dtype).eps (float32: ~1.19e-7;
  bfloat16: 2^-7); ours applies RMSNorm (scale) before it. With unit scales
  the two commute (a rotation keeps each head's norm). `config_from_public`
  sets `qk_norm_eps` to finfo(our activation dtype).eps, the public value for
  the same dtype; our own models keep qk_norm_eps = norm_eps = 1e-5.
- Gates: public gate = sigmoid(raw_gamma) * gamma_max; ours gate_max *
  sigmoid(raw). We keep the gate VALUES: raw = logit(sigmoid(raw_gamma) *
  gamma_max / gate_max), which is raw_gamma itself when gamma_max == gate_max
  (copied bit for bit). A gate >= our gate_max cannot be represented: error.
- Embedding/logit scales: the public model multiplies embeddings by
  `init.embedding_scale` and logits by `init.logit_scale`, both set by the
  config's `init_strategy` (the public `attractor/utils/init.py`, see
  `INIT_STRATEGY_SCALES`); `public_scales` derives them and refuses a
  strategy it does not know. Both are folded exactly into the weights:
  E' = s E and ln_f' = ln_f * logit_scale / s (tied).
- Solver steps: the public solvers return f(x) of their last iterate x after
  max_iter evaluations of f; ours returns its last (or best) iterate and
  spends one more evaluation on that iterate's residual. Public max_iter N
  maps to our max_iter N: both outputs then use the same N values of f (for
  Picard/fpi, ours is exactly f^N(c), the public output). The public
  Anderson first tests convergence at its third evaluation and counts
  min_iter in evaluations, so min_iter P maps to max(P - 1, 2) (fpi:
  max(P - 1, 0)), the same first iterate allowed to stop; and, as the public
  model does, Anderson with max_iter < 3 becomes Picard. See
  docs/checkpoint_import.md.
- RMSNorm: the public norm's learned `weight` multiplies the normalised input
  (no unit offset outside "Gemma"-named configs), like our `scale`.

Why one module of ~660 lines: the name and layout map from the public
PyTorch checkpoints to ours is one table, read top to bottom.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import numpy as safetensors_np

from attractor_jax.models import presets
from attractor_jax.models.config import DTYPES
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.models.config import config_from_dict
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn import attractor_head

# Non-parameter buffers of the public model, ignored (freqs_cis is checked).
PUBLIC_BUFFERS = ("freqs_cis",)
# Wrapper prefixes (torch.compile, DDP, Lightning, an HF-style wrapper)
# stripped from every name, as the public loader does.
WRAPPER_PREFIXES = ("_orig_mod.", "module.", "model.", "_forward_module.")

# The public code's QK-norm epsilon on float32 activations: torch's rms_norm
# default, finfo(dtype).eps of its input.
PUBLIC_QK_NORM_EPS = float(np.finfo(np.float32).eps)

# Fields of the public LM configs (attractor/configs/attractor/*.py) that our
# preset registry does not hold: the gates (our presets use our own), the
# backward details and the public-only settings. Shapes and solver settings
# come from the registry (`presets.public_counterparts`), so each public fact
# is written down once.
_PUBLIC_COMMON = dict(
    block_size=2048, padding_multiple=64, bias=False,
    architecture_class_name="Attractor",
    block_class_name="TransformerPreNormBlock", norm_class_name="RMSNorm",
    logit_softcap=None, init_strategy="scaled-zero", init_orthogonal=True)
_PUBLIC_ONLY = {
    "attractor-small-140m": dict(
        backward_min_iter=6, adjoint_grad_clip=None, layer_scale_init=0.75,
        gamma_max=0.75),
    "attractor-medium-370m": dict(
        backward_min_iter=6, adjoint_grad_clip=None, layer_scale_init=0.75,
        gamma_max=1.0),
    "attractor-large-770m": dict(
        backward_min_iter=6, adjoint_grad_clip=2.0, layer_scale_init=0.73,
        gamma_max=0.9),
    "attractor-xlarge-1_3b": dict(
        backward_min_iter=8, adjoint_grad_clip=None, layer_scale_init=0.5,
        gamma_max=1.0),
}
_PUBLIC_NONLIN = {"relu2": ("BaseMLP", "ReLU2"), "swiglu": ("GatedMLP", "SiLU")}


def _public_preset(public_name: str, config: ModelConfig) -> dict:
  """The public config (its field names) of one of our registry's presets."""
  solve = config.solve
  mlp_class, nonlin = _PUBLIC_NONLIN[config.mlp]
  backward_type = ("onestep" if solve.backward == "onestep"
                   else solve.backward_solver)
  return dict(
      _PUBLIC_COMMON, name=public_name, vocab_size=config.vocab_size,
      solver={"anderson": "anderson", "picard": "fpi"}[solve.solver],
      n_embd=config.dim, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_heads, intermediate_size=config.mlp_dim,
      tie_embeddings=config.tie_embeddings, norm_eps=config.norm_eps,
      mlp_class_name=mlp_class, nonlin_name=nonlin, qk_norm=config.qk_norm,
      rope_settings=dict(use_rope=True, rope_condense_ratio=1,
                         rope_base=int(config.rope_theta)),
      n_backbone_layers=config.num_layers, n_fp_blocks=config.head_layers,
      max_iter=solve.max_iter, min_iter=solve.min_iter, tol=solve.tol,
      anderson_m=solve.history, anderson_beta=solve.mixing,
      backward_type=backward_type,
      backward_max_iter=solve.backward_max_iter or solve.max_iter,
      backward_tol=solve.backward_tol or solve.tol,
      **_PUBLIC_ONLY[public_name])


# The public LM presets, by their public names.
PUBLIC_PRESETS = {
    public: _public_preset(public, presets.get_preset(ours))
    for public, ours in presets.public_counterparts().items()}

# (embedding_scale, logit_scale) that each public `init_strategy` implies, as
# a function of the width d: the public Init's `embedding_scale` (its table's
# "embed_scale", default 1) and `logit_scale` (its table's "logit_scale",
# default 1, divided by mup_model_scaling_factor, which must be 1 here).
# Nothing else in a strategy changes the forward pass (only the init).
_UNIT = lambda d: (1.0, 1.0)
INIT_STRATEGY_SCALES = {
    **{name: _UNIT for name in (
        "mitchell", "normal", "llama", "llama-by-dim", "kaiming", "bert",
        "megatron", "megatron2", "small", "scaled", "scaled-geiping",
        "scaled-zero", "scaled-stuck", "wang", "deepnorm-straight",
        "deepnorm-subln", "bernstein", "illiterate", "scaled-large-embed")},
    **{name: (lambda d: (1.0, 1.0 / math.sqrt(d))) for name in (
        "llama-by-dim-ls", "noci-anagnostidis", "shaped", "deep-scale-simple",
        "deep-scale-full", "scaled-and-logit-scale")},
    "takase": lambda d: (math.sqrt(d), 1.0),
    "takase-scaled": lambda d: (math.sqrt(d), math.sqrt(2 / 5) / math.sqrt(d)),
}
# The public Config's default init_strategy.
PUBLIC_DEFAULT_INIT_STRATEGY = "scaled"


# One line that turns the public save_pretrained's pytorch_model.bin (or a
# torch.save'd model.pt) into safetensors; needs torch and safetensors. The
# copy unties tensors that share memory (the tied lm_head), which
# safetensors refuses to save.
TORCH_TO_SAFETENSORS = (
    "python -c \"import sys, torch, safetensors.torch as st; "
    "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
    "st.save_file({k: v.to(torch.float32, copy=True).contiguous() "
    "for k, v in sd.items()}, sys.argv[2])\" "
    "pytorch_model.bin model.safetensors")
_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


# ------------------------------------------------------------- checkpoint


def _read_bfloat16_safetensors(path: str, header: dict) -> dict:
  """safetensors' numpy loader cannot read BF16; read those tensors here."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16,
            "F32": np.float32, "F64": np.float64}
  tensors = {}
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    data = memoryview(f.read()[header_len:])
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in dtypes:
      raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; "
                       f"expected one of {sorted(dtypes)}.")
    start, end = info["data_offsets"]
    tensors[name] = np.frombuffer(data[start:end], dtypes[info["dtype"]]
                                  ).reshape(info["shape"])
  return tensors


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """The tensors of a public checkpoint saved as safetensors (BF16 too).

  Raises:
    ValueError: for a PyTorch checkpoint (pickle or zip; .bin, .pt, ...),
      with the one line that converts it (`TORCH_TO_SAFETENSORS`), or for a
      file that is not safetensors at all.
  """
  with open(path, "rb") as f:
    head = f.read(8)
    header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    header_bytes = f.read(header_len) if 0 < header_len < 1 << 30 else b""
  try:
    header = json.loads(header_bytes)
  except ValueError:
    header = None
  if not isinstance(header, dict) or 8 + header_len > os.path.getsize(path):
    if head.startswith((b"PK\x03\x04", b"\x80")) or path.endswith(
        _TORCH_SUFFIXES):                     # zip or pickle: torch.save
      raise ValueError(
          f"{path} is a PyTorch checkpoint (the public save_pretrained writes "
          "pytorch_model.bin); this converter reads safetensors. Convert it "
          f"once, with torch and safetensors installed:\n  "
          f"{TORCH_TO_SAFETENSORS}\n(docs/checkpoint_import.md).")
    raise ValueError(f"{path} is not a safetensors file.")
  if any(isinstance(v, Mapping) and v.get("dtype") == "BF16"
         for v in header.values()):
    return _read_bfloat16_safetensors(path, header)
  return safetensors_np.load_file(path)


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


def public_scales(public_cfg: Mapping[str, Any], *,
                  embedding_scale: Optional[float] = None,
                  logit_scale: Optional[float] = None) -> tuple[float, float]:
  """(embedding_scale, logit_scale) of a public config, from its init_strategy.

  Args:
    public_cfg: the public config (its field names); `init_strategy` defaults
      to the public default, "scaled".
    embedding_scale, logit_scale: explicit values. Needed (both) for a
      strategy not in `INIT_STRATEGY_SCALES`; for a known one they must equal
      what the strategy implies.

  Raises:
    ValueError: an unknown strategy without both explicit scales, explicit
      scales (or scales named in the config) that contradict the strategy, or
      a mup_model_scaling_factor other than 1.
  """
  strategy = public_cfg.get("init_strategy") or PUBLIC_DEFAULT_INIT_STRATEGY
  if public_cfg.get("mup_model_scaling_factor", 1) != 1:
    raise ValueError("Public mup_model_scaling_factor != 1 is not supported.")
  init = public_cfg.get("init")
  init = init if isinstance(init, Mapping) else {}
  named = {"embedding_scale": embedding_scale, "logit_scale": logit_scale}
  for key in named:                 # scales written into the config itself
    if named[key] is None:
      named[key] = public_cfg.get(key, init.get(key))
  if strategy not in INIT_STRATEGY_SCALES:
    if None in named.values():
      raise ValueError(
          f"Public init_strategy {strategy!r} is unknown, so its embedding and "
          "logit scales cannot be derived; pass both (--embedding_scale and "
          f"--logit_scale). Known strategies: {sorted(INIT_STRATEGY_SCALES)}.")
    return float(named["embedding_scale"]), float(named["logit_scale"])
  derived = INIT_STRATEGY_SCALES[strategy](int(public_cfg["n_embd"]))
  for (key, given), want in zip(named.items(), derived):
    if given is not None and not math.isclose(float(given), want,
                                              rel_tol=1e-6):
      raise ValueError(
          f"{key}={given} contradicts the public init_strategy {strategy!r}, "
          f"which gives {want:.6g} at n_embd={public_cfg['n_embd']}.")
  return derived


def config_from_public(public_cfg: Mapping[str, Any], **overrides
                       ) -> AttractorLMConfig:
  """Our ModelConfig for a public AttractorConfig (its field names).

  Training-only fields (lr scales, init strategy, ...) are ignored; settings
  our model cannot reproduce (biases, clip_qkv, codas, ...) raise ValueError.
  The embedding/logit scales are not part of our config: see
  `public_scales`. Solver steps are mapped so that our output uses as many
  evaluations of f as the public one (module docstring): max_iter N stays N,
  min_iter P becomes max(P - 1, 2) for Anderson and max(P - 1, 0) for
  Picard (public "fpi"), and Anderson with max_iter < 3 becomes Picard.
  `qk_norm_eps` is finfo(dtype).eps of our activation dtype (the public
  default for activations of that dtype) unless overridden.
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
  public_solver = _require(cfg, "solver", ("anderson", "fpi"), "anderson")
  max_iter = int(cfg.get("max_iter", 12))
  if public_solver == "anderson" and max_iter < 3:
    public_solver = "fpi"                  # as the public model does
  solver = {"anderson": "anderson", "fpi": "picard"}[public_solver]
  # The public min_iter counts evaluations of f; its Anderson first tests
  # convergence at the third. Ours counts steps after the first evaluation.
  first_test = 2 if public_solver == "anderson" else 0
  public_min_iter = min(int(cfg.get("min_iter", 0)), max_iter)
  min_iter = min(max(public_min_iter - 1, first_test), max_iter)
  tol = float(cfg.get("tol", 1e-3))
  # anderson_m and anderson_beta are Anderson's alone: the public fpi is
  # plain, undamped iteration (f^N(c)), so they are not Picard's damping.
  anderson = {}
  if solver == "anderson":
    anderson = dict(history=int(cfg.get("anderson_m", 5)),
                    mixing=float(cfg.get("anderson_beta", 1.0)))
  solve = attractor_head.SolveConfig(
      solver=solver, **anderson, max_iter=max_iter,
      min_iter=min_iter, tol=tol,
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
  if "qk_norm_eps" not in overrides:
    dtype = DTYPES[fields.get("dtype", "float32")]
    fields["qk_norm_eps"] = float(jnp.finfo(dtype).eps)
  return AttractorLMConfig(**fields)


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
    embedding_scale, logit_scale: the public `init` scales, folded in (see
      `public_scales`; 1 and 1 for the public presets' "scaled-zero").

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
    bare = name
    while bare.startswith(WRAPPER_PREFIXES):
      bare = bare.split(".", 1)[1]
    if bare != name:
      if bare in tensors:
        raise ValueError(f"{name!r} and {bare!r} are both in the checkpoint.")
      tensors[bare] = tensors.pop(name)
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


def convert_public(tensors: Mapping[str, np.ndarray],
                   public_cfg: Mapping[str, Any], *,
                   embedding_scale: Optional[float] = None,
                   logit_scale: Optional[float] = None, **overrides
                   ) -> tuple[ModelConfig, dict]:
  """(our config, our parameters) of a public checkpoint and its config.

  Everything the public config decides is taken from it: the architecture
  and solver (`config_from_public`, with `overrides`), the scales
  (`public_scales`, with the explicit values given) and the gates' gamma_max.
  """
  config = config_from_public(public_cfg, **overrides)
  emb, logit = public_scales(public_cfg, embedding_scale=embedding_scale,
                             logit_scale=logit_scale)
  gamma_max = float(public_cfg.get("gamma_max") or 1.0)
  params = convert_state_dict(tensors, config, public_gamma_max=gamma_max,
                              embedding_scale=emb, logit_scale=logit)
  return config, params


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


__all__ = ["INIT_STRATEGY_SCALES", "PUBLIC_BUFFERS", "PUBLIC_PRESETS",
           "PUBLIC_QK_NORM_EPS", "config_from_dict", "config_from_public",
           "convert_public", "convert_state_dict",
           "load_into_model", "public_scales"]
