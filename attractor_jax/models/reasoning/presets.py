"""Named presets of the puzzle models, sized for Sudoku (vocab 11, 81 cells).

The paper's sizes (docs/design.md section 1.7) are TRM's network at width 512
with 8 heads and a SwiGLU MLP of 1536 hidden units (TRM's expansion 4:
4 * 512 * 2/3 rounded up to a multiple of 256):

- `*-7m`: 2 layers, 6.83M parameters counted for Sudoku;
- `*-27m`: 8 layers, 27.28M parameters.

Counts include the one shared puzzle embedding (512 parameters; TRM gives
every Sudoku and Maze puzzle id 0). A table of one row per puzzle id
(`num_puzzle_ids`) adds 512 per id: ~0.5M for 1000 puzzles, which the
paper's names leave out. Our blocks' RMSNorms carry a learned scale (TRM's
are weightless): 1024 parameters a layer.

TRM's settings (its config/arch/trm.yaml and README): H_cycles 3, L_cycles 6
for Sudoku-Extreme (L 4 for Maze-Hard), L_layers 2, hidden 512, 8 heads,
expansion 4, RoPE theta 10000, puzzle_emb_len 16, puzzle_emb_ndim = hidden,
halt_max_steps 16, q_head bias -5. The attractor reasoner keeps them, with
the L loop replaced by a solve of at most 18 steps (TRM's 3 x 6 latent
updates) and a single H cycle. The transformer is as large and runs once.

`*-tiny` presets (width 32, 2 layers, 1 prefix position, 4 segments) train
in seconds on a CPU.

    config = presets.get_preset("trm-7m", puzzle="maze")
"""

from __future__ import annotations

import dataclasses
import difflib

from attractor_jax import errors
from attractor_jax.models.reasoning import config as config_lib


@dataclasses.dataclass(frozen=True)
class Preset:
  """A registry entry: the config and its parameter count for Sudoku."""

  config: config_lib.ReasonerConfig
  stated_params: int


# Puzzle shapes (tokens of attractor_jax.puzzles): Sudoku 0 pad, 1 blank,
# 2..10 digits; Maze 0 pad, 1 wall, 2 open, 3 start, 4 goal, 5 path.
PUZZLES = {
    "sudoku": dict(vocab_size=11, seq_len=81),
    "maze": dict(vocab_size=6, seq_len=900),
}
# TRM's L_cycles per puzzle (its README's Sudoku and Maze runs).
TRM_L_CYCLES = {"sudoku": 6, "maze": 4}

_W512 = dict(PUZZLES["sudoku"], dim=512, num_heads=8, mlp_dim=1536)
_TINY = dict(PUZZLES["sudoku"], dim=32, num_heads=2, mlp_dim=64,
             num_layers=2, puzzle_emb_len=1, max_segments=4)
_TINY_SOLVE = dataclasses.replace(config_lib.REASONER_SOLVE, max_iter=16)


def _trm(shape: dict, layers: int, size: float, **changes) -> Preset:
  fields = dict(shape, num_layers=layers, **changes)
  return Preset(config_lib.TRMConfig(**fields), int(size))


def _attractor(shape: dict, layers: int, size: float, **changes) -> Preset:
  fields = dict(shape, num_layers=layers, **changes)
  return Preset(config_lib.AttractorReasonerConfig(**fields), int(size))


def _transformer(shape: dict, layers: int, size: float) -> Preset:
  fields = dict(shape, num_layers=layers, max_segments=1)
  return Preset(config_lib.TransformerReasonerConfig(**fields), int(size))


PRESETS: dict[str, Preset] = {
    "trm-7m": _trm(_W512, 2, 7e6),
    "trm-27m": _trm(_W512, 8, 27e6),
    "attractor-reasoner-7m": _attractor(_W512, 2, 7e6),
    "attractor-reasoner-27m": _attractor(_W512, 8, 27e6),
    "transformer-7m": _transformer(_W512, 2, 7e6),
    "transformer-27m": _transformer(_W512, 8, 27e6),
    # CPU-sized: TRM with H 2, L 2; the reasoner solves in at most 16 steps.
    "trm-tiny": _trm(_TINY, 2, 21e3, h_cycles=2, l_cycles=2),
    "attractor-reasoner-tiny": _attractor(_TINY, 2, 21e3, solve=_TINY_SOLVE),
    "transformer-tiny": _transformer(_TINY, 2, 21e3),
}


def list_presets() -> list[str]:
  """The names of all presets, in registry order."""
  return list(PRESETS)


def _lookup(name: str) -> Preset:
  key = name.strip().lower()
  if key in PRESETS:
    return PRESETS[key]
  close = difflib.get_close_matches(key, list(PRESETS), n=1, cutoff=0.6)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise errors.ConfigError(f"Unknown preset {name!r}.{hint} Known presets: "
                           f"{', '.join(PRESETS)}.")


def for_puzzle(config: config_lib.ReasonerConfig, puzzle: str
               ) -> config_lib.ReasonerConfig:
  """`config` with the vocabulary and length of `puzzle` ("sudoku", "maze").

  Raises:
    errors.ConfigError: an unknown puzzle.
  """
  if puzzle not in PUZZLES:
    raise errors.ConfigError(f"Unknown puzzle {puzzle!r}; expected one of "
                             f"{', '.join(PUZZLES)}.")
  return config.replace(**PUZZLES[puzzle])


def get_preset(name: str, puzzle: str = "sudoku"
               ) -> config_lib.ReasonerConfig:
  """The config of a named preset (case-insensitive), shaped for `puzzle`.

  The paper-size TRM presets also take TRM's L_cycles for the puzzle (6 for
  Sudoku, 4 for Maze); the tiny ones keep theirs.

  Raises:
    errors.ConfigError: an unknown name (with a close match) or puzzle.
  """
  key = name.strip().lower()
  config = for_puzzle(_lookup(name).config, puzzle)
  if isinstance(config, config_lib.TRMConfig) and not key.endswith("-tiny"):
    config = config.replace(l_cycles=TRM_L_CYCLES[puzzle])
  return config


def stated_params(name: str) -> int:
  """The parameter count a preset should have for Sudoku (its nominal size)."""
  return _lookup(name).stated_params
