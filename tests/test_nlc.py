"""The nlc task: CLINC150 fixtures, out-of-scope modes and metrics, the loss's terms, learning."""
from __future__ import annotations

from statistics import mean

import pytest
import torch

from qa_tasks.text_classification.nlc import NLC, oos_metrics
from qa_tasks.text_classification.self_attentive import attention_penalty
from qa_tasks.text_classification.text import UNK_ID
from tests.helpers import plain_train
from tests.text_files import write_clinc


def test_nlc_without_test_split_says_so(tmp_path):
    task = NLC(data="real", data_dir=str(write_clinc(tmp_path)), model="cnn")
    with pytest.raises(ValueError, match="withholds test"):
        task.evaluate(task.build_model(), "test")


def test_nlc_oos_modes(tmp_path):
    root = str(write_clinc(tmp_path))
    as_class = NLC(data="real", data_dir=root, oos="class", min_count=1)
    assert as_class.label_names == ["alarm", "balance", "translate", "oos"]
    assert len(as_class.texts("train")) == 8 and as_class.build_model().mlp[-1].out_features == 4
    thresh = NLC(data="real", data_dir=root, oos="threshold", model="cnn", min_count=1)
    assert len(thresh.texts("train")) == 6 and thresh.build_model().out.out_features == 3
    metrics = thresh.evaluate(thresh.build_model(), "valid")
    assert 0.0 <= metrics["threshold"] <= 1.0 + 1e-6


def test_oos_metrics_computed_example():
    labels = torch.tensor([0, 1, 2, 3, 3])           # 3 = oos
    predicted = torch.tensor([0, 3, 2, 3, 1])
    m = oos_metrics(predicted, labels, oos_id=3)
    assert m == pytest.approx({"in_scope_accuracy": 2 / 3, "oos_recall": 1 / 2, "accuracy": 3 / 5})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["selfattn", "cnn"])
def test_nlc_generated_learns(model):
    task = NLC(data="generated", model=model, embed_dim=32, hidden=24, attention_dim=16, hops=2,
               mlp_hidden=48, filters=16, batch=32)
    assert task.split_names() == ["train", "valid", "test"]
    losses, trained = plain_train(task, steps=60)
    assert mean(losses[-10:]) < 0.6 * mean(losses[:10])
    metrics = task.evaluate(trained, "valid")
    assert metrics["in_scope_accuracy"] > 0.8


def test_nlc_loss_adds_the_penalty_times_its_coefficient():
    options = dict(data="generated", embed_dim=16, hidden=8, attention_dim=8, hops=3, dropout=0.0,
                   embed_dropout=0.0, word_dropout=0.0, batch=16)
    torch.manual_seed(0)
    net = NLC(**options).build_model()
    batch = next(NLC(**options).batches(0, 1, seed=0))
    _, A = net.forward_with_attention(batch["tokens"], batch["lengths"])
    without = NLC(**options).loss(net, batch).item()
    with_penalty = NLC(**options, penalty=0.7).loss(net, batch).item()
    assert with_penalty == pytest.approx(without + 0.7 * attention_penalty(A).item(), rel=1e-5)
    assert attention_penalty(A).item() > 0


@pytest.mark.parametrize("model", ["selfattn", "cnn"])
def test_nlc_adversarial_term_is_the_loss_at_the_worst_nearby_word_vectors(model):
    """loss = clean + the loss at word vectors moved by eps (L2 per sentence, padding untouched)
    along the clean loss's gradient: more than the clean loss, and than a random move that size."""
    options = dict(data="generated", model=model, embed_dim=16, hidden=8, attention_dim=8, filters=8,
                   dropout=0.0, embed_dropout=0.0, word_dropout=0.0, batch=16)
    plain, adversarial = NLC(**options), NLC(**options, adversarial=1.0)
    torch.manual_seed(0)
    net = plain.build_model()
    batch = next(plain.batches(0, 1, seed=0))
    seen = []
    with net.embed.register_forward_hook(lambda m, i, x: seen.append(x)):
        clean = plain.loss(net, batch)
    g, = torch.autograd.grad(clean, seen[0], retain_graph=True)
    g[batch["tokens"] == 0] = 0
    r = g / g.flatten(1).norm(dim=1)[:, None, None]

    def loss_moved_by(move):
        with net.embed.register_forward_hook(lambda m, i, x: x + move):
            return plain.loss(net, batch)

    total = adversarial.loss(net, batch)
    assert total.item() == pytest.approx((clean + loss_moved_by(r)).item(), rel=1e-5)
    random = torch.randn_like(r).masked_fill((batch["tokens"] == 0)[..., None], 0)
    random = random / random.flatten(1).norm(dim=1)[:, None, None]
    worst = (total - clean).item()
    assert worst > clean.item() and worst > loss_moved_by(random).item()
    total.backward()                          # one backward through both terms
    assert net.embed.weight.grad.abs().sum() > 0


def test_nlc_word_dropout_turns_words_into_unk_while_training():
    task = NLC(data="generated", model="cnn", word_dropout=0.5, batch=64)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, tokens, lengths):
            seen.append(tokens.clone())
            return torch.zeros(len(tokens), len(task.label_names), requires_grad=True)

    batch = next(task.batches(0, 1, seed=0))
    task.loss(Spy(), batch)
    words = batch["tokens"] != 0
    changed = seen[0] != batch["tokens"]
    assert (seen[0][changed] == UNK_ID).all() and words[changed].all()    # only words, only to <unk>
    assert 0.35 < changed.sum() / words.sum() < 0.65
    with pytest.raises(ValueError, match="word_dropout"):
        NLC(data="generated", word_dropout=1.0)
