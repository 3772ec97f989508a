"""Packs tokenized documents into fixed-length training rows (pure numpy).

Packing rule (greedy, sequential): every document gets EOS appended (and BOS
prepended when `bos_id` is given); the documents are laid end to end in
corpus order into one token stream, which is cut into consecutive rows of
`seq_len + 1` tokens. A document longer than the space left in a row
continues at the start of the next row, so no row has padding except the
last, and every token of the stream lands in exactly one row.

Each row becomes one example of length `seq_len`:

* `inputs = row[:-1]`, `targets = row[1:]`;
* `segment_ids`: 1, 2, ... for the document pieces of the row, 0 on padding;
  attention must stay within one segment id;
* `positions`: restart at 0 at the start of every piece. A document carried
  over from the previous row starts again at 0, so positions never exceed
  `seq_len - 1` (a piece is treated as its own document);
* a target whose token belongs to another piece than its input (the step
  from one document's EOS into the next document) or lies on padding is set
  to `ignore_index`.

`PackedRows` computes rows lazily from any random-access source of token
arrays (a list, or ArrayRecord files), so the stream never has to be built in
memory; `pack_documents` stacks all rows for small corpora and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE_INDEX = -100


class PackedRows:
  """Random-access packed rows over a random-access source of token documents.

  Implements grain's `RandomAccessDataSource` protocol (`len`, `[index]`),
  so it can feed `grain.MapDataset.source` directly.
  """

  def __init__(self, token_documents: Any, seq_len: int, *, eos_id: int,
               bos_id: int | None = None, pad_id: int = 0,
               ignore_index: int = IGNORE_INDEX,
               document_lengths: Sequence[int] | None = None):
    """Indexes the documents; reads each one once only to learn its length.

    Args:
      token_documents: `len()` and `[i] -> 1-D int array`, without bos/eos.
      seq_len: the example length; rows hold `seq_len + 1` tokens.
      eos_id: appended to every document.
      bos_id: prepended to every document when given.
      pad_id: fills the end of the last row.
      ignore_index: target value where no loss is taken.
      document_lengths: the documents' raw token counts, when known, to skip
        the length pass (useful for large ArrayRecord corpora).
    """
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    self._documents = token_documents
    self.seq_len = seq_len
    self.row_length = seq_len + 1
    self.eos_id, self.bos_id, self.pad_id = eos_id, bos_id, pad_id
    self.ignore_index = ignore_index
    if document_lengths is None:
      document_lengths = [len(token_documents[i])
                          for i in range(len(token_documents))]
    elif len(document_lengths) != len(token_documents):
      raise ValueError(
          f"{len(document_lengths)} document_lengths for "
          f"{len(token_documents)} documents")
    specials = 1 + (bos_id is not None)
    lengths = np.asarray(document_lengths, dtype=np.int64) + specials
    # offsets[d] is where document d starts in the token stream.
    self.offsets = np.concatenate([[0], np.cumsum(lengths)])
    self.num_tokens = int(self.offsets[-1])
    self._num_rows = -(-self.num_tokens // self.row_length)
    # A long document fills many consecutive rows: keep the last one read.
    # (Swapping one tuple is atomic, so reader threads may share it.)
    self._last_document: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int32))

  def __len__(self) -> int:
    return self._num_rows

  def _document_with_specials(self, index: int) -> np.ndarray:
    cached_index, cached = self._last_document
    if cached_index == index:
      return cached
    parts = [np.asarray(self._documents[index], dtype=np.int32).reshape(-1),
             np.asarray([self.eos_id], dtype=np.int32)]
    if self.bos_id is not None:
      parts.insert(0, np.asarray([self.bos_id], dtype=np.int32))
    document = np.concatenate(parts)
    self._last_document = (index, document)
    return document

  def row_pieces(self, row: int) -> list[tuple[int, int, int]]:
    """The `(document, start, stop)` slices, with specials, that fill `row`."""
    if not 0 <= row < self._num_rows:
      raise IndexError(f"row {row} out of range [0, {self._num_rows})")
    row_start = row * self.row_length
    row_stop = min(row_start + self.row_length, self.num_tokens)
    document = int(np.searchsorted(self.offsets, row_start, side="right")) - 1
    pieces = []
    while document < len(self.offsets) - 1 and \
        self.offsets[document] < row_stop:
      doc_start, doc_stop = self.offsets[document], self.offsets[document + 1]
      start, stop = max(row_start, doc_start), min(row_stop, doc_stop)
      if stop > start:
        pieces.append((document, int(start - doc_start),
                       int(stop - doc_start)))
      document += 1
    return pieces

  def row_tokens(self, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens `[seq_len + 1]` of `row` and their segment ids (0 = padding)."""
    tokens = np.full(self.row_length, self.pad_id, dtype=np.int32)
    segments = np.zeros(self.row_length, dtype=np.int32)
    cursor = 0
    for segment, (document, start, stop) in enumerate(self.row_pieces(row), 1):
      piece = self._document_with_specials(document)[start:stop]
      tokens[cursor:cursor + len(piece)] = piece
      segments[cursor:cursor + len(piece)] = segment
      cursor += len(piece)
    return tokens, segments

  def __getitem__(self, row: int) -> dict[str, np.ndarray]:
    tokens, segments = self.row_tokens(int(row))
    return row_to_example(tokens, segments, self.ignore_index)


def row_to_example(tokens: np.ndarray, segments: np.ndarray,
                   ignore_index: int = IGNORE_INDEX) -> dict[str, np.ndarray]:
  """Turns a packed row of `seq_len + 1` tokens into a training example.

  Args:
    tokens: `[seq_len + 1]` token ids.
    segments: `[seq_len + 1]` piece numbers (1-based), 0 on padding.
    ignore_index: target value where no loss is taken.

  Returns:
    `inputs`, `targets`, `segment_ids`, `positions`, each int32 `[seq_len]`.
  """
  tokens = np.asarray(tokens, dtype=np.int32)
  segments = np.asarray(segments, dtype=np.int32)
  same_piece = (segments[1:] == segments[:-1]) & (segments[1:] != 0)
  targets = np.where(same_piece, tokens[1:], ignore_index).astype(np.int32)
  segment_ids = segments[:-1]
  index = np.arange(len(segment_ids), dtype=np.int32)
  piece_start = np.ones(len(segment_ids), dtype=bool)
  piece_start[1:] = segment_ids[1:] != segment_ids[:-1]
  positions = index - np.maximum.accumulate(np.where(piece_start, index, 0))
  positions = np.where(segment_ids != 0, positions, 0).astype(np.int32)
  return {"inputs": tokens[:-1], "targets": targets,
          "segment_ids": segment_ids, "positions": positions}


def pack_documents(token_documents: Sequence[Any], seq_len: int, *,
                   eos_id: int, bos_id: int | None = None, pad_id: int = 0,
                   ignore_index: int = IGNORE_INDEX) -> dict[str, np.ndarray]:
  """Packs all documents at once; see the module docstring for the rule.

  Returns:
    `inputs`, `targets`, `segment_ids`, `positions`, each int32
    `[num_rows, seq_len]`.
  """
  rows = PackedRows(token_documents, seq_len, eos_id=eos_id, bos_id=bos_id,
                    pad_id=pad_id, ignore_index=ignore_index)
  examples = [rows[i] for i in range(len(rows))]
  if not examples:
    raise ValueError("No documents to pack")
  return {key: np.stack([e[key] for e in examples]) for key in examples[0]}
