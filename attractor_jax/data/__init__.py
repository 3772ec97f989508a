"""Data: text corpora, the SentencePiece tokenizer and grain pipelines.

Knows nothing of models (no model or Flax imports). A typical text run:

    documents = builtin_corpus()
    train_docs, validation_docs = split_documents(documents, 0.05, seed=0)
    tokenizer = get_or_train_tokenizer(workdir, train_docs, vocab_size=2048)
    dataset = make_lm_dataset(tokenize_documents(train_docs, tokenizer),
                              seq_len=256, batch_size=32,
                              eos_id=tokenizer.eos_id, seed=0)
    iterator = iter(dataset)
    batch = next(iterator)      # inputs/targets/segment_ids/positions
    state = iterator.get_state()  # JSON dict; iterator.set_state(state)
"""

from attractor_jax.data.array_record import ArrayRecordDocuments
from attractor_jax.data.array_record import write_array_record
from attractor_jax.data.corpus import builtin_corpus
from attractor_jax.data.corpus import split_documents
from attractor_jax.data.corpus import text_file_documents
from attractor_jax.data.corpus import text_files
from attractor_jax.data.corpus import tfds_documents
from attractor_jax.data.packing import IGNORE_INDEX
from attractor_jax.data.packing import pack_documents
from attractor_jax.data.packing import PackedRows
from attractor_jax.data.pipeline import BATCH_KEYS
from attractor_jax.data.pipeline import make_lm_dataset
from attractor_jax.data.tokenizer import get_or_train_tokenizer
from attractor_jax.data.tokenizer import load_tokenizer
from attractor_jax.data.tokenizer import tokenize_documents
from attractor_jax.data.tokenizer import TokenizedDocuments
from attractor_jax.data.tokenizer import Tokenizer
from attractor_jax.data.tokenizer import train_sentencepiece
