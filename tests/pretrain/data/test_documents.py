import numpy as np

from pretrain.data.documents import document_inputs


def test_two_rows_of_packed_documents():
    # Row 0: documents of 3 and 2 tokens, then 1 pad; row 1: one document of 4 tokens + a start at 4 in
    # the padding (ignored), and a start flag missing at position 0 (a row always opens a document).
    doc_start = np.array([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0]], dtype=np.uint8)
    out = document_inputs(doc_start, np.array([5, 4]))
    assert out["document_ids"].tolist() == [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    assert out["cu_seqlens"].tolist() == [0, 3, 5, 9]
    assert out["cu_seqlens"].dtype == np.int32
    assert out["unpad_indices"].tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9]


def test_unpadded_documents_match_the_ids():
    rng = np.random.default_rng(0)
    doc_start = rng.random((4, 16)) < 0.2
    lengths = np.array([16, 9, 1, 12])
    out = document_inputs(doc_start, lengths)
    flat_docs = out["document_ids"].reshape(-1)[out["unpad_indices"]]
    row_of = out["unpad_indices"] // 16
    # Each cu_seqlens segment holds one (row, document) pair, and the segments cover every token once.
    cu = out["cu_seqlens"]
    assert cu[-1] == lengths.sum()
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        assert len({(int(r), int(d)) for r, d in zip(row_of[a:b], flat_docs[a:b], strict=True)}) == 1
        assert out["position_ids"].reshape(-1)[out["unpad_indices"][a:b]].tolist() == list(range(b - a))
