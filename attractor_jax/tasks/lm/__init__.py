"""The language-model task: corpus and tokenizer, packed batches, validation
loss, held-out last words, the test-time depth sweep and generation."""

from attractor_jax.tasks.lm.task import LMTask
