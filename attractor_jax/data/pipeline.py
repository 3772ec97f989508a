"""The grain input pipeline for language modelling.

    rows = PackedRows(token documents)          # fixed-length packed rows
    grain.MapDataset.source(rows)
        .shuffle(seed)                          # global shuffle of rows
        .repeat(num_epochs)                     # reshuffled every epoch
        .batch(batch_size)                      # this host's share of a step
        [shard_index::shard_count]              # this host's shares
        .to_iter_dataset(read options)

Packing happens before shuffling, over the corpus order, so the set of rows
is fixed and only their order depends on the seed. Every stage is a grain
`MapDataset` (index in, element out), so the whole pipeline is a pure
function of the step index: the iterator's state is `{"next_index": k}`, a
JSON-serialisable dict, and `set_state` on a fresh iterator resumes with
exactly the same batches. Threads only prefetch; they never change the order.

Multi-host: every host builds the same `PackedRows` and the same shuffled
stream of rows, cut into pieces of `batch_size` rows (this host's share of a
global batch); host `shard_index` of `shard_count` (typically
`jax.process_index(), jax.process_count()`) takes pieces `shard_index,
shard_index + shard_count, ...`. So global batch k, the hosts' pieces stacked
in process order, is rows `[k * G, (k + 1) * G)` of the stream (G the global
batch), the same rows in the same order for any number of hosts, and each
host reads only its own rows. With a finite number of epochs only whole
global batches are kept, so every host runs the same number of steps.
"""

from __future__ import annotations

from typing import Any

import grain

from attractor_jax import errors
from attractor_jax.data.packing import IGNORE_INDEX
from attractor_jax.data.packing import PackedRows

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions")


def make_lm_dataset(token_documents: Any, seq_len: int, batch_size: int, *,
                    eos_id: int, bos_id: int | None = None, pad_id: int = 0,
                    seed: int = 0, shuffle: bool = True,
                    num_epochs: int | None = None, shard_index: int = 0,
                    shard_count: int = 1, drop_remainder: bool = True,
                    ignore_index: int = IGNORE_INDEX,
                    document_lengths: Any = None, read_threads: int = 4,
                    prefetch_batches: int = 8) -> grain.IterDataset:
  """Packed, shuffled, batched language-modelling data.

  Args:
    token_documents: token arrays without bos/eos: a list, or any source with
      `len()` and `[i]` (e.g. `ArrayRecordDocuments(..., kind="tokens")`),
      or an already built `PackedRows`.
    seq_len: tokens per example.
    batch_size: examples per batch on this host (the global batch divided by
      `shard_count`).
    eos_id: appended to every document (see `packing`).
    bos_id: prepended to every document when given.
    pad_id: token id of padding.
    seed: shuffling seed; the same seed gives the same batches.
    shuffle: shuffle rows (reshuffled each epoch); False keeps corpus order.
    num_epochs: passes over the rows; None repeats forever.
    shard_index: this host's shard, in [0, shard_count).
    shard_count: number of disjoint shards (hosts).
    drop_remainder: drop a last incomplete batch (keeps shapes static); with
      several shards an incomplete global batch is always dropped.
    ignore_index: target value where no loss is taken.
    document_lengths: raw token counts of the documents, to skip the pass
      that measures them.
    read_threads: grain threads reading rows ahead.
    prefetch_batches: batches grain keeps ready.

  Returns:
    A `grain.IterDataset`; `iter()` gives a `grain.DatasetIterator` of dicts
    of int32 arrays `[batch_size, seq_len]` with keys `BATCH_KEYS`.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got "
                     f"{shard_index}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if isinstance(token_documents, PackedRows):
    rows = token_documents
  else:
    rows = PackedRows(token_documents, seq_len, eos_id=eos_id, bos_id=bos_id,
                      pad_id=pad_id, ignore_index=ignore_index,
                      document_lengths=document_lengths)
  if rows.seq_len != seq_len:
    raise ValueError(f"PackedRows has seq_len {rows.seq_len}, not {seq_len}")
  global_batch = batch_size * shard_count
  if len(rows) == 0 or (drop_remainder and len(rows) < global_batch):
    raise errors.DataError(
        f"The corpus packs into {len(rows)} rows of {seq_len + 1} tokens: "
        f"too few for a batch of {global_batch} ({shard_count} shard(s) of "
        f"{batch_size}). Use more text, a smaller seq_len or batch.")
  dataset = grain.MapDataset.source(rows)
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  dataset = dataset.repeat(num_epochs)
  dataset = dataset.batch(batch_size,
                          drop_remainder=drop_remainder or shard_count > 1)
  if shard_count > 1:
    if num_epochs is not None:   # only whole global batches
      dataset = dataset[:len(dataset) // shard_count * shard_count]
    dataset = dataset[shard_index::shard_count]
  return dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=prefetch_batches))

