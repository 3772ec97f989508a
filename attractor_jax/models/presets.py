"""Named model presets: one registry, one line per preset.

The LM presets follow the public code's shapes (docs/design.md section 2):
width / heads / MLP / backbone + head blocks / max_iter, min_iter, tol. Every
preset shares vocab 32768, ReLU^2 MLPs, QK-norm, RoPE theta 50000, RMSNorm eps
1e-5, no biases and tied embeddings.

- `attractor-790m` is the public code's "1.3b" preset (1536/12/6144/23+3): it
  has ~0.79B parameters, so it is named by its real size here, and
  `get_preset("attractor-1.3b")` raises an error that points to it.
- `gpt-*` baselines have the same width, heads and MLP, and as many blocks as
  the attractor's backbone + head, so parameter counts match.
- `looped-*` baselines (Parcae-style, prelude / looped core / coda) split the
  same total blocks as Parcae does, about a third each, the remainder going to
  the core: prelude = coda = total // 3. The core runs `mean_depth` = 8 times
  on average in training (Parcae's mean recurrence) with gradients through the
  last `backprop_depth` = 4 (truncated backprop, our choice).
- `*-tiny` presets train in seconds on a CPU (tests, notebooks, smoke runs).

Each preset states the parameter count it should have (`stated_params`);
tests/models/test_presets.py counts every preset's parameters against it.

Usage:

    config = presets.get_preset("attractor-140m")
    model = models.build_model(config, rngs=nnx.Rngs(0))
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Optional

from attractor_jax import errors
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.models.config import DEQConfig
from attractor_jax.models.config import GPTConfig
from attractor_jax.models.config import LoopedConfig
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn.attractor_head import SolveConfig


@dataclasses.dataclass(frozen=True)
class Preset:
  """A registry entry.

  Attributes:
    config: the model configuration (an instance of its kind's registered
      config class: AttractorLMConfig, GPTConfig, ...).
    stated_params: the parameter count this preset should have (its nominal
      size; the real count is within a few percent of it).
    public_name: the public code's preset whose shapes and solver settings
      this one has (`torch_import.PUBLIC_PRESETS` is derived from them).
  """

  config: ModelConfig
  stated_params: int
  public_name: Optional[str] = None


# Settings every preset shares (docs/design.md section 2), then the sizes:
# vocab / dim / heads / MLP.
_LM = dict(vocab_size=32768, mlp="relu2", qk_norm=True, rope_theta=50000.0,
           norm_eps=1e-5, tie_embeddings=True)
_W1024 = dict(_LM, dim=1024, num_heads=8, mlp_dim=4096)
_W1280 = dict(_LM, dim=1280, num_heads=10, mlp_dim=5120)
_W1536 = dict(_LM, dim=1536, num_heads=12, mlp_dim=6144)
_TINY = dict(_LM, vocab_size=256, dim=64, num_heads=4, mlp_dim=256)


def _solve(max_iter: int, min_iter: int, tol: float, *, mixing: float = 1.0,
           backward: str = "onestep") -> SolveConfig:
  """Anderson (history 5, mixing beta) with the given stopping rule."""
  return SolveConfig(solver="anderson", history=5, mixing=mixing,
                     max_iter=max_iter, min_iter=min_iter, tol=tol,
                     backward=backward)


def _attractor(shape: dict, backbone: int, head: int, solve: SolveConfig,
               size: float, public_name: Optional[str] = None) -> Preset:
  return Preset(AttractorLMConfig(num_layers=backbone, head_layers=head,
                                  solve=solve, **shape), int(size),
                public_name)


def _gpt(shape: dict, layers: int, size: float) -> Preset:
  return Preset(GPTConfig(num_layers=layers, **shape), int(size))


def _looped(shape: dict, total: int, size: float, *, mean_depth: int = 8,
            backprop_depth: int = 4) -> Preset:
  """Prelude and coda of total // 3 blocks each; the rest is the looped core."""
  outer = total // 3
  config = LoopedConfig(prelude_layers=outer, num_layers=total - 2 * outer,
                        coda_layers=outer, mean_depth=mean_depth,
                        backprop_depth=backprop_depth, **shape)
  return Preset(config, int(size))


def _deq(shape: dict, layers: int, solve: SolveConfig, size: float) -> Preset:
  """A DEQ's output head is untied by definition, and its training keeps the
  core contracting with a Jacobian penalty of weight 1 (see models/deq.py:
  the tiny preset stays fully converged over 300 steps with it, and loses
  convergence within 200 without)."""
  shape = dict(shape, tie_embeddings=False)
  return Preset(DEQConfig(num_layers=layers, solve=solve,
                          jacobian_penalty=1.0, **shape), int(size))


PRESETS: dict[str, Preset] = {
    # Attractor LMs: backbone blocks, head blocks, (max_iter, min_iter, tol).
    "attractor-140m": _attractor(_W1024, 7, 1, _solve(64, 6, 3e-4), 140e6,
                                 "attractor-small-140m"),
    "attractor-370m": _attractor(_W1280, 15, 2, _solve(64, 8, 2e-4), 370e6,
                                 "attractor-medium-370m"),
    "attractor-770m": _attractor(
        _W1280, 35, 2,
        _solve(32, 6, 1.5e-4, mixing=0.96, backward="implicit"), 770e6,
        "attractor-large-770m"),
    # The public code's "1.3b": really ~0.79B parameters. Its solver settings
    # are the public config's own (max_iter 64, min_iter 8, tol 1e-4).
    "attractor-790m": _attractor(_W1536, 23, 3, _solve(64, 8, 1e-4), 790e6,
                                 "attractor-xlarge-1_3b"),
    # Transformers with as many blocks as the attractor's backbone + head.
    "gpt-140m": _gpt(_W1024, 8, 140e6),
    "gpt-370m": _gpt(_W1280, 17, 370e6),
    "gpt-770m": _gpt(_W1280, 37, 770e6),
    # Parcae-style looped models: prelude / core / coda of the same blocks.
    "looped-140m": _looped(_W1024, 8, 140e6),                 # 2 / 4 / 2
    "looped-370m": _looped(_W1280, 17, 370e6),                # 5 / 7 / 5
    "looped-770m": _looped(_W1280, 37, 770e6),                # 12 / 13 / 12
    # CPU-sized presets.
    "attractor-tiny": _attractor(_TINY, 2, 1, _solve(16, 0, 1e-3), 165e3),
    "gpt-tiny": _gpt(_TINY, 3, 165e3),
    "looped-tiny": _looped(_TINY, 3, 165e3, mean_depth=4,
                           backprop_depth=2),                 # 1 / 1 / 1
    "deq-tiny": _deq(_TINY, 2, _solve(16, 0, 1e-3), 132e3),
}

# Names of the public code that we do not reuse, and why.
_RENAMED = {
    "attractor-1.3b": ("attractor-790m", "the public code's \"1.3b\" preset "
                       "(1536/12/6144/23+3) has ~0.79B parameters, not 1.3B"),
}


def list_presets() -> list[str]:
  """The names of all presets, in registry order."""
  return list(PRESETS)


def _lookup(name: str) -> Preset:
  key = name.strip().lower()
  if key in PRESETS:
    return PRESETS[key]
  if key in _RENAMED:
    new_name, reason = _RENAMED[key]
    raise errors.ConfigError(
        f"Preset {name!r} is named {new_name!r} here: {reason}.")
  close = difflib.get_close_matches(key, list(PRESETS), n=1, cutoff=0.6)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise errors.ConfigError(f"Unknown preset {name!r}.{hint} Known presets: "
                           f"{', '.join(PRESETS)}.")


def get_preset(name: str) -> ModelConfig:
  """The config of a named preset (case-insensitive), an instance of its
  kind's registered config class (a ModelConfig subclass).

  Raises:
    errors.ConfigError (a ValueError): for an unknown name (with the known
      names and a close match) or a public-code name that is spelled
      differently here.
  """
  return _lookup(name).config


def public_counterparts() -> dict[str, str]:
  """Public preset name -> the name of our preset with its shapes and solver."""
  return {preset.public_name: name for name, preset in PRESETS.items()
          if preset.public_name is not None}


def stated_params(name: str) -> int:
  """The parameter count a preset should have (its nominal size)."""
  return _lookup(name).stated_params
