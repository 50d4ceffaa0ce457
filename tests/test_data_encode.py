"""data.encode: document batches and the worker's encoding, in process (the pool: test_data_prepare)."""

from __future__ import annotations

import numpy as np
from test_data_corpus import make_docs

from data.encode import DocumentEncoder, batches
from data.sources import AUTO, VAL
from data.tokenizer import special_ids, train_bpe

DOCS = make_docs(12)


def test_batches_keep_the_order_and_close_at_the_size():
    stream = [(VAL if i < 3 else AUTO, d) for i, d in enumerate(DOCS)]
    grouped = list(batches(stream, batch_chars=2000))
    assert [d for _, texts in grouped for d in texts] == DOCS
    assert [k for kinds, _ in grouped for k in kinds] == [k for k, _ in stream]
    assert all(sum(map(len, texts)) - len(texts[-1]) < 2000 for _, texts in grouped)  # the last one closes it
    assert len(grouped) > 1 and list(batches([], 2000)) == []


def test_each_document_is_encoded_as_bos_ids_eos():
    tok = train_bpe(DOCS, 300, bos=True)
    for bos in (False, True):
        eos_id, bos_id = special_ids(tok, bos=bos)
        flat, lengths = DocumentEncoder(tok, eos_id, bos_id, np.dtype("<u2"))(DOCS[:4])
        expected = [[bos_id] * bos + tok.encode(d).ids + [eos_id] for d in DOCS[:4]]
        assert flat.dtype == np.uint16 and lengths.tolist() == [len(e) for e in expected]
        np.testing.assert_array_equal(flat, np.concatenate(expected))
