"""qa_tasks/text_classification/kim_cnn.py: Kim's (2014) CNN."""
from __future__ import annotations

import torch

from qa_tasks.text_classification.kim_cnn import KimCNN
from qa_tasks.text_classification.text import pad_batch


def test_cnn_ignores_batch_padding():
    torch.manual_seed(0)
    model = KimCNN(20, 3, embed_dim=8, maps=4).eval()
    alone = model(*pad_batch([[4, 5]]))
    batched = model(*pad_batch([[4, 5], list(range(2, 15))]))
    torch.testing.assert_close(alone[0], batched[0])
