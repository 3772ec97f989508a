"""Tests for the grain language-modelling pipeline."""

import json

import numpy as np
import pytest

from attractor_jax.data import get_or_train_tokenizer
from attractor_jax.data import tokenize_documents
from attractor_jax.data.packing import pack_documents
from attractor_jax.data.packing import PackedRows
from attractor_jax.data.pipeline import BATCH_KEYS
from attractor_jax.data.pipeline import make_lm_dataset

EOS = 3
SEQ_LEN, BATCH_SIZE = 16, 4


@pytest.fixture(scope="module")
def documents():
  rng = np.random.default_rng(0)
  return [rng.integers(4, 500, size=rng.integers(1, 60)).astype(np.int32)
          for _ in range(80)]


def make(documents, **kwargs):
  options = dict(eos_id=EOS, seed=0, read_threads=2)
  options.update(kwargs)
  return make_lm_dataset(documents, SEQ_LEN, BATCH_SIZE, **options)


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def rows_as_bytes(batches):
  return [np.concatenate([b[k][i] for k in BATCH_KEYS]).tobytes()
          for b in batches for i in range(len(b["inputs"]))]


def test_batches_have_the_documented_shapes(documents):
  batch = next(iter(make(documents)))
  assert set(batch) == set(BATCH_KEYS)
  for key in BATCH_KEYS:
    assert batch[key].shape == (BATCH_SIZE, SEQ_LEN)
    assert batch[key].dtype == np.int32


def test_deterministic_for_a_seed_and_different_for_another(documents):
  first = take(iter(make(documents, seed=5)), 6)
  assert_same_batches(first, take(iter(make(documents, seed=5)), 6))
  other = take(iter(make(documents, seed=6)), 6)
  assert rows_as_bytes(first) != rows_as_bytes(other)


def test_restored_state_continues_with_the_same_batches(documents):
  iterator = iter(make(documents, seed=1))
  take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 5)
  restored = iter(make(documents, seed=1))
  restored.set_state(state)
  assert_same_batches(take(restored, 5), expected)
  # Restoring an earlier state rewinds.
  restored.set_state(state)
  assert_same_batches(take(restored, 1), expected[:1])


def test_one_epoch_without_shuffle_is_the_packed_corpus(documents):
  packed = pack_documents(documents, SEQ_LEN, eos_id=EOS)
  batches = list(make(documents, shuffle=False, num_epochs=1,
                      drop_remainder=False))
  for key in BATCH_KEYS:
    np.testing.assert_array_equal(
        np.concatenate([b[key] for b in batches]), packed[key])


def test_each_epoch_visits_every_row_once_in_a_new_order(documents):
  num_rows = len(PackedRows(documents, SEQ_LEN, eos_id=EOS))
  batches = list(make(documents, num_epochs=2, drop_remainder=False))
  rows = rows_as_bytes(batches)
  assert len(rows) == 2 * num_rows
  first_epoch, second_epoch = rows[:num_rows], rows[num_rows:]
  unshuffled = rows_as_bytes(list(make(documents, shuffle=False, num_epochs=1,
                                       drop_remainder=False)))
  assert sorted(first_epoch) == sorted(unshuffled)
  assert sorted(second_epoch) == sorted(unshuffled)
  assert first_epoch != second_epoch != unshuffled


def test_shards_are_disjoint_equal_and_cover_the_corpus(documents):
  num_rows = len(PackedRows(documents, SEQ_LEN, eos_id=EOS))
  shards = [rows_as_bytes(list(make(documents, shard_index=i, shard_count=3,
                                    num_epochs=1, drop_remainder=False)))
            for i in range(3)]
  assert len({len(shard) for shard in shards}) == 1
  # Only whole global batches of 3 x BATCH_SIZE rows are kept.
  global_batch = 3 * BATCH_SIZE
  assert len(shards[0]) * 3 == num_rows // global_batch * global_batch
  everything = [row for shard in shards for row in shard]
  assert len(set(everything)) == len(everything)
  unshuffled = rows_as_bytes(list(make(documents, shuffle=False, num_epochs=1,
                                       drop_remainder=False)))
  assert set(everything) <= set(unshuffled)


@pytest.mark.parametrize("shard_count", [2, 4])
def test_global_batches_do_not_depend_on_the_number_of_shards(
    documents, shard_count):
  """Hosts' pieces, stacked in process order, are the one-host batches."""
  global_batch = 8
  one_host = take(iter(make_lm_dataset(
      documents, SEQ_LEN, global_batch, eos_id=EOS, seed=1)), 5)
  hosts = [take(iter(make_lm_dataset(
      documents, SEQ_LEN, global_batch // shard_count, eos_id=EOS, seed=1,
      shard_index=i, shard_count=shard_count)), 5)
           for i in range(shard_count)]
  for step, batch in enumerate(one_host):
    for key in BATCH_KEYS:
      stacked = np.concatenate([host[step][key] for host in hosts])
      np.testing.assert_array_equal(stacked, batch[key])


def test_prebuilt_packed_rows_are_accepted(documents):
  rows = PackedRows(documents, SEQ_LEN, eos_id=EOS)
  assert_same_batches(take(iter(make(rows, seed=2)), 2),
                      take(iter(make(documents, seed=2)), 2))
  with pytest.raises(ValueError, match="seq_len"):
    make_lm_dataset(rows, SEQ_LEN + 1, BATCH_SIZE, eos_id=EOS)


def test_invalid_arguments_are_clear_errors(documents):
  with pytest.raises(ValueError, match="too few"):
    make_lm_dataset(documents[:1], SEQ_LEN, 64, eos_id=EOS)
  with pytest.raises(ValueError, match="shard_index"):
    make(documents, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="batch_size"):
    make_lm_dataset(documents, SEQ_LEN, 0, eos_id=EOS)


def test_text_to_batches_end_to_end(small_documents, small_tokenizer_file,
                                    tmp_path):
  tokenizer = get_or_train_tokenizer(tmp_path, None, None,
                                     model_file=small_tokenizer_file)
  token_documents = tokenize_documents(small_documents[:5], tokenizer)
  batch = next(iter(make_lm_dataset(token_documents, 64, 2, shuffle=False,
                                    eos_id=tokenizer.eos_id)))
  text = tokenizer.decode(batch["inputs"][0])
  assert small_documents[0].startswith(text)
