"""The nlc task: CLINC150 fixtures, out-of-scope modes and metrics, the loss's terms, learning."""
from __future__ import annotations

from statistics import mean

import pytest
import torch

from qa_tasks.text_classification.nlc import NLC, fit_cutoff, oos_metrics
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
    assert -2.0 <= metrics["oos_cutoff"] <= 1.0      # minus a probability, or 1 beyond one


def test_oos_metrics_computed_example():
    labels = torch.tensor([0, 1, 2, 3, 3])           # 3 = oos
    predicted = torch.tensor([0, 3, 2, 3, 1])
    m = oos_metrics(predicted, labels, oos_id=3)
    assert m == pytest.approx({"in_scope_accuracy": 2 / 3, "oos_recall": 1 / 2, "accuracy": 3 / 5})


def test_fit_cutoff_computed_example():
    # scores sorted high to low; o: oos, +: in-scope answered right, -: in-scope answered wrong
    #          o    +    -    o    +    +    o    +
    score = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0])
    is_oos = torch.tensor([1, 0, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    correct = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1], dtype=torch.bool)
    # in-scope accuracy without a cut-off 4/5; flagging the top 4 finds 2 of 3 oos and loses 1
    assert fit_cutoff(score, correct, is_oos, floor=0.6) == 1.5           # 3/5 >= 0.6: top 4
    assert fit_cutoff(score, correct, is_oos, floor=0.8) == 4.5           # only the first oos: top 1
    assert fit_cutoff(score, correct, is_oos, floor=0.0) == -1.5          # every oos, 3 right lost
    assert fit_cutoff(score, correct, is_oos, floor=0.9) == 6.0           # nothing reaches 0.9: flag none
    # ties are flagged together: the cut-off never splits equal scores
    tied = torch.tensor([5.0, 4.0, 4.0, 2.0, 1.0, 0.0, -1.0, -2.0])
    assert fit_cutoff(tied, correct, is_oos, floor=0.8) == 4.5
    with pytest.raises(ValueError, match="needs in-scope and out-of-scope"):
        fit_cutoff(score, correct, torch.zeros(8, dtype=torch.bool), floor=0.5)


@pytest.mark.parametrize("oos", ["class", "threshold"])
def test_nlc_cutoff_is_fitted_on_valid_and_applied_to_every_split(oos):
    task = NLC(data="generated", oos=oos, model="cnn", embed_dim=16, filters=8, batch=32,
               oos_tolerance=0.05)
    torch.manual_seed(0)
    net = task.build_model()
    for _ in range(15):   # a little training, so that the scores spread
        batch_loss = task.loss(net, next(task.batches(0, 1, seed=0)))
        batch_loss.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.5 * p.grad
                p.grad = None
    valid, test = task.evaluate(net, "valid"), task.evaluate(net, "test")
    assert valid["oos_cutoff"] == test["oos_cutoff"] == task.fit_cutoff(net)
    logits, labels = task.split_logits(net, "test")
    predicted = task.predict(logits, test["oos_cutoff"])
    assert ((predicted == task.oos_id) == (task.oos_score(logits) >= test["oos_cutoff"])).all()
    assert test == {**oos_metrics(predicted, labels, task.oos_id), "oos_cutoff": test["oos_cutoff"]}
    # on valid, in-scope accuracy stays within the tolerance of the rule without a cut-off
    logits, labels = task.split_logits(net, "valid")
    without = task.predict(logits, float("inf") if oos == "threshold" else 0.0)
    base = oos_metrics(without, labels, task.oos_id)["in_scope_accuracy"]
    assert valid["in_scope_accuracy"] >= base - 0.05 - 1e-9
    assert valid["oos_recall"] >= oos_metrics(without, labels, task.oos_id)["oos_recall"]


def test_nlc_oos_weight_weighs_the_oos_queries_in_the_loss():
    options = dict(data="generated", model="cnn", embed_dim=16, filters=8, dropout=0.0,
                   word_dropout=0.0, adversarial=0.0, batch=64)
    plain, weighted = NLC(**options), NLC(**options, oos_weight=3.0)
    torch.manual_seed(0)
    net = plain.build_model()
    batch = next(plain.batches(0, 1, seed=0))
    each = torch.nn.functional.cross_entropy(net(batch["tokens"], batch["lengths"]), batch["labels"],
                                             reduction="none")
    w = 1.0 + 2.0 * (batch["labels"] == plain.oos_id).float()
    assert (batch["labels"] == plain.oos_id).any()
    assert plain.loss(net, batch).item() == pytest.approx(each.mean().item(), rel=1e-5)
    assert weighted.loss(net, batch).item() == pytest.approx(((w * each).sum() / w.sum()).item(), rel=1e-5)
    for bad in (dict(oos_weight=0.0), dict(oos_tolerance=-0.1), dict(oos_tolerance=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NLC(data="generated", **bad)


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
                   embed_dropout=0.0, word_dropout=0.0, adversarial=0.0, batch=16)
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
    plain, adversarial = NLC(**options, adversarial=0.0), NLC(**options, adversarial=1.0)
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
    task = NLC(data="generated", model="cnn", word_dropout=0.5, adversarial=0.0, batch=64)
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
