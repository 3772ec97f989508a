"""Puzzle data sets made and checked here: Sudoku-Extreme and Maze-Hard.

Each puzzle kind is a module (`sudoku`, `maze`) with its generator, loader
and augmentation; `python -m attractor_jax.puzzles --help` lists the
commands that build and inspect them. Importing this package imports
neither, so it stays cheap.
"""
