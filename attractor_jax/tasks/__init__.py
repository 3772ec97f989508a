"""What the trainer can learn: one package per task.

Each task package owns its data preparation, its `training.tasks.Task`, its
config checks and its evaluators, and writes its own outputs under the
workdir. The shared loop (`attractor_jax.training`) knows a task only by the
name `config.task` gives it (`training.tasks.register_task`); nothing in
`training/` imports a task package.

- `lm`: next-token prediction on packed text (`configs/lm.py`).
- `puzzles`: Sudoku-Extreme and Maze-Hard with deep supervision
  (`configs/sudoku.py`, `configs/maze.py`).
"""
