"""Tests for packing token documents into fixed-length rows."""

import numpy as np
import pytest

from attractor_jax.data.packing import IGNORE_INDEX
from attractor_jax.data.packing import pack_documents
from attractor_jax.data.packing import PackedRows

EOS, BOS, PAD = 99, 98, 0


def random_documents(seed, count=30, max_length=40):
  rng = np.random.default_rng(seed)
  return [rng.integers(4, 90, size=rng.integers(0, max_length))
          for _ in range(count)]


def test_hand_packed_example():
  # Stream: 1 2 3 E 4 5 E 6 7 8 9 10 E -> rows of 5 tokens.
  packed = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], seq_len=4,
                          eos_id=EOS, pad_id=PAD)
  ignore = IGNORE_INDEX
  np.testing.assert_array_equal(
      packed["inputs"], [[1, 2, 3, EOS], [5, EOS, 6, 7], [9, 10, EOS, PAD]])
  np.testing.assert_array_equal(
      packed["targets"],
      [[2, 3, EOS, ignore], [EOS, ignore, 7, 8], [10, EOS, ignore, ignore]])
  np.testing.assert_array_equal(
      packed["segment_ids"], [[1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 1, 0]])
  np.testing.assert_array_equal(
      packed["positions"], [[0, 1, 2, 3], [0, 1, 0, 1], [0, 1, 2, 0]])
  assert all(v.dtype == np.int32 for v in packed.values())


def test_bos_starts_every_document_and_ignore_index_is_a_parameter():
  packed = pack_documents([[1, 2], [3]], seq_len=6, eos_id=EOS, bos_id=BOS,
                          ignore_index=-1)
  np.testing.assert_array_equal(packed["inputs"], [[BOS, 1, 2, EOS, BOS, 3]])
  np.testing.assert_array_equal(packed["targets"], [[1, 2, EOS, -1, 3, EOS]])
  np.testing.assert_array_equal(packed["positions"], [[0, 1, 2, 3, 0, 1]])


@pytest.mark.parametrize("seq_len,bos_id", [(7, None), (16, BOS), (64, None)])
def test_every_token_lands_in_exactly_one_row_in_order(seq_len, bos_id):
  documents = random_documents(seed=seq_len)
  rows = PackedRows(documents, seq_len, eos_id=EOS, bos_id=bos_id)
  specials_before = [] if bos_id is None else [bos_id]
  stream = np.concatenate(
      [np.concatenate([specials_before, d, [EOS]]) for d in documents])
  row_tokens = [rows.row_tokens(i) for i in range(len(rows))]
  assert all(len(t) == seq_len + 1 for t, _ in row_tokens)
  packed_stream = np.concatenate([t[s != 0] for t, s in row_tokens])
  np.testing.assert_array_equal(packed_stream, stream)
  # Only the last row has padding.
  assert all((s != 0).all() for _, s in row_tokens[:-1])
  assert len(rows) == -(-len(stream) // (seq_len + 1))


@pytest.mark.parametrize("seq_len", [5, 16])
def test_targets_never_cross_a_document_boundary(seq_len):
  documents = random_documents(seed=seq_len + 100)
  rows = PackedRows(documents, seq_len, eos_id=EOS)
  for index in range(len(rows)):
    tokens, segments = rows.row_tokens(index)
    example = rows[index]
    np.testing.assert_array_equal(example["inputs"], tokens[:-1])
    kept = example["targets"] != IGNORE_INDEX
    # Kept targets are the next token of the same piece, never padding...
    np.testing.assert_array_equal(example["targets"][kept], tokens[1:][kept])
    assert (segments[1:][kept] == segments[:-1][kept]).all()
    assert (example["segment_ids"][kept] != 0).all()
    # ...and every other target is ignored: no over-masking either.
    crossing = (segments[1:] != segments[:-1]) | (segments[1:] == 0)
    np.testing.assert_array_equal(~kept, crossing)
    # The step after an EOS (into the next document) is always ignored.
    after_eos = (tokens[:-1] == EOS) & (segments[:-1] != 0)
    assert (example["targets"][after_eos] == IGNORE_INDEX).all()


def test_segment_ids_and_positions_restart_per_piece():
  documents = random_documents(seed=7)
  rows = PackedRows(documents, 12, eos_id=EOS)
  for index in range(len(rows)):
    example = rows[index]
    segment_ids, positions = example["segment_ids"], example["positions"]
    pieces = [segment for segment in np.unique(segment_ids) if segment]
    assert pieces == list(range(1, len(pieces) + 1))
    for segment in pieces:
      where = np.flatnonzero(segment_ids == segment)
      assert (np.diff(where) == 1).all()  # A piece is contiguous.
      np.testing.assert_array_equal(positions[where], np.arange(len(where)))
    assert (positions[segment_ids == 0] == 0).all()
    assert positions.max() < 12


def test_row_pieces_follow_documents():
  rows = PackedRows([[1, 2, 3], [], [4] * 20], seq_len=4, eos_id=EOS)
  assert rows.row_pieces(0) == [(0, 0, 4), (1, 0, 1)]  # Empty doc: just EOS.
  assert rows.row_pieces(1) == [(2, 0, 5)]
  assert rows.num_tokens == 4 + 1 + 21 and len(rows) == 6
  assert rows.row_pieces(5) == [(2, 20, 21)]  # The last row: one token.
  with pytest.raises(IndexError):
    rows.row_pieces(len(rows))


def test_given_document_lengths_match_measured_ones():
  documents = random_documents(seed=3)
  measured = PackedRows(documents, 8, eos_id=EOS)
  given = PackedRows(documents, 8, eos_id=EOS,
                     document_lengths=[len(d) for d in documents])
  np.testing.assert_array_equal(measured.offsets, given.offsets)
  with pytest.raises(ValueError, match="document_lengths"):
    PackedRows(documents, 8, eos_id=EOS, document_lengths=[1, 2])


def test_invalid_arguments():
  with pytest.raises(ValueError, match="seq_len"):
    PackedRows([[1]], 0, eos_id=EOS)
  with pytest.raises(ValueError, match="No documents"):
    pack_documents([], 4, eos_id=EOS)
