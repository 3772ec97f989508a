"""Tests for the text corpora: built-in Shakespeare, text files, tfds."""

import collections
import re
import sys
import types

import pytest

from attractor_jax.data import corpus
from attractor_jax.data.corpus import builtin_corpus
from attractor_jax.data.corpus import markdown_play_to_scenes
from attractor_jax.data.corpus import split_documents
from attractor_jax.data.corpus import text_file_documents
from attractor_jax.data.corpus import tfds_documents


def test_builtin_corpus_is_real_english_without_markup():
  documents = builtin_corpus()
  assert len(documents) > 700
  text = "\n".join(documents)
  assert len(text) > 4_000_000
  assert "To be, or not to be" in text
  words = collections.Counter(re.findall(r"[a-z']+", text.lower()))
  assert [w for w, _ in words.most_common(3)] == ["the", "and", "i"]
  for markup in ("**", "_", "\\[", "\n#", "  \n"):
    assert markup not in text, markup
  assert all(document.strip() == document and document
             for document in documents)


def test_builtin_corpus_is_deterministic_and_plays_hold_the_scenes():
  first = builtin_corpus()
  corpus._builtin_corpus_cached.cache_clear()  # Re-read the files.
  assert builtin_corpus() == first
  plays = builtin_corpus(unit="play")
  assert len(plays) == 38
  assert "\n\n".join(plays) == "\n\n".join(first)
  with pytest.raises(ValueError, match="unit"):
    builtin_corpus(unit="act")


def test_markdown_play_to_scenes_carries_headings_and_strips_markup():
  markdown = ("# A Play\n\n## ACT I\n\n### SCENE I. A heath.\n\n"
              "_Thunder. Enter two WITCHES_\n\n**FIRST WITCH**  \n"
              "When shall we  \nmeet again? __\\[Aside]_\n\n\n\n"
              "### SCENE II. A camp.\n\n**DUNCAN**  \n"
              "What bloody man is that?\n")
  scenes = markdown_play_to_scenes(markdown)
  assert scenes == [
      "A Play\nACT I\nSCENE I. A heath.\n\nThunder. Enter two WITCHES\n\n"
      "FIRST WITCH:\nWhen shall we\nmeet again? [Aside]",
      "SCENE II. A camp.\n\nDUNCAN:\nWhat bloody man is that?",
  ]


def test_split_documents_is_disjoint_complete_and_deterministic():
  documents = [f"document {i}" for i in range(100)]
  train, validation = split_documents(documents, 0.1, seed=3)
  assert len(validation) == 10 and len(train) == 90
  assert set(train).isdisjoint(validation)
  assert sorted(train + validation) == sorted(documents)
  assert train == [d for d in documents if d in set(train)]  # Corpus order.
  assert split_documents(documents, 0.1, seed=3) == (train, validation)
  assert split_documents(documents, 0.1, seed=4)[1] != validation
  assert len(split_documents(documents[:5], 0.01)[1]) == 1
  assert split_documents(documents, 0.0)[0] == documents


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_split_documents_rejects_bad_fractions(fraction):
  with pytest.raises(ValueError, match="validation_fraction"):
    split_documents(["a", "b"], fraction)


def test_split_documents_keeps_a_training_document():
  with pytest.raises(ValueError, match="keep any for training"):
    split_documents(["only"], 0.5)


def test_missing_corpus_path_names_the_path(tmp_path):
  missing = tmp_path / "no_such_corpus"
  with pytest.raises(FileNotFoundError, match="no_such_corpus"):
    text_file_documents(missing)


def test_text_folder_documents_split_at_blank_line_runs(tmp_path):
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "second.txt").write_text("Third document.\n")
  (tmp_path / "a.txt").write_text(
      "First paragraph.\n\nSame document.\n\n\nSecond document.\n  \n \n")
  (tmp_path / "notes.md").write_text("Not a text file.")
  assert text_file_documents(tmp_path) == [
      "First paragraph.\n\nSame document.", "Second document.",
      "Third document."]
  assert text_file_documents(tmp_path, min_blank_lines=None) == [
      "First paragraph.\n\nSame document.\n\n\nSecond document.",
      "Third document."]
  assert text_file_documents(tmp_path, min_blank_lines=1)[:2] == [
      "First paragraph.", "Same document."]
  assert text_file_documents(tmp_path / "a.txt")[1] == "Second document."


def test_text_folder_without_text_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
    text_file_documents(tmp_path)
  (tmp_path / "blank.txt").write_text("\n   \n")
  with pytest.raises(ValueError, match="holds no text"):
    text_file_documents(tmp_path)
  (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  with pytest.raises(ValueError, match="latin1.txt.*UTF-8"):
    text_file_documents(tmp_path)


def test_tfds_without_the_package_explains_it_is_optional(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="optional package tensorflow-datasets"):
    tfds_documents("lm1b")


def test_tfds_reads_text_through_data_source(monkeypatch):
  calls = []

  def data_source(name, split, data_dir, download):
    calls.append((name, split, data_dir, download))
    return [{"text": b"First doc."}, {"text": "Second doc."}]

  fake_tfds = types.SimpleNamespace(data_source=data_source)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds)
  source = tfds_documents("lm1b", "train[:2]", data_dir="/data")
  assert len(source) == 2
  assert [source[0], source[1]] == ["First doc.", "Second doc."]
  assert calls == [("lm1b", "train[:2]", "/data", False)]
