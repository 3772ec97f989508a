"""The puzzle task: Sudoku-Extreme and Maze-Hard with TRM's deep
supervision, exact-accuracy evaluation by difficulty tier."""

from attractor_jax.tasks.puzzles.task import PuzzleTask
