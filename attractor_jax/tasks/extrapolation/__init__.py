"""The extrapolation task: prefix sums and mazes generated at any size,
trained small and solved large by iterating longer."""

from attractor_jax.tasks.extrapolation.task import ExtrapolationTask
