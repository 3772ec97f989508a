"""Tests for ArrayRecord corpora: write, read back, feed the pipeline."""

import numpy as np
import pytest

from attractor_jax.data.array_record import ArrayRecordDocuments
from attractor_jax.data.array_record import write_array_record
from attractor_jax.data.pipeline import make_lm_dataset

TEXTS = ["First document.\nWith two lines.", "", "Ünïcödé — 😀", "Last."]


def test_text_round_trip(tmp_path):
  path = tmp_path / "corpus.array_record"
  assert write_array_record(iter(TEXTS), path) == len(TEXTS)
  documents = ArrayRecordDocuments(path, kind="text")
  assert len(documents) == len(TEXTS)
  assert [documents[i] for i in range(len(TEXTS))] == TEXTS
  assert documents[np.int64(3)] == "Last."


def test_token_round_trip_across_shards_of_a_folder(tmp_path):
  rng = np.random.default_rng(0)
  token_documents = [rng.integers(0, 70_000, size=n) for n in (5, 0, 17, 3)]
  write_array_record(token_documents[:2], tmp_path / "part-0.array_record")
  write_array_record(token_documents[2:], tmp_path / "part-1.array_record")
  documents = ArrayRecordDocuments(tmp_path, kind="tokens")
  assert len(documents) == 4
  for index, expected in enumerate(token_documents):
    assert documents[index].dtype == np.int32
    np.testing.assert_array_equal(documents[index], expected)
  np.testing.assert_array_equal(documents.document_lengths(), [5, 0, 17, 3])


def test_pipeline_reads_token_files_like_in_memory_lists(tmp_path):
  rng = np.random.default_rng(1)
  token_documents = [rng.integers(4, 300, size=rng.integers(1, 40))
                     for _ in range(30)]
  write_array_record(token_documents, tmp_path / "tokens.array_record")
  on_disk = ArrayRecordDocuments(tmp_path / "tokens.array_record", "tokens")
  options = dict(eos_id=3, seed=4, read_threads=2)
  from_disk = iter(make_lm_dataset(
      on_disk, 8, 4, document_lengths=on_disk.document_lengths(), **options))
  in_memory = iter(make_lm_dataset(token_documents, 8, 4, **options))
  for _ in range(3):
    a, b = next(from_disk), next(in_memory)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such.array_record"):
    ArrayRecordDocuments(tmp_path / "no_such.array_record")
  with pytest.raises(FileNotFoundError, match="gone.array_record"):
    ArrayRecordDocuments([tmp_path / "gone.array_record"])
  with pytest.raises(ValueError, match="holds no"):
    ArrayRecordDocuments(tmp_path)
  with pytest.raises(ValueError, match="one kind"):
    write_array_record(["text", [1, 2]], tmp_path / "mixed.array_record")
  assert not (tmp_path / "mixed.array_record").exists()
  with pytest.raises(ValueError, match="1-D integer"):
    write_array_record([np.zeros((2, 2))], tmp_path / "bad.array_record")
  with pytest.raises(ValueError, match="kind"):
    write_array_record(["a"], tmp_path / "ok.array_record")
    ArrayRecordDocuments(tmp_path / "ok.array_record", kind="bytes")
