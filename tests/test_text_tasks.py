"""Text workloads (qc, nlc): tokenizer, vocabulary, loaders on fixtures in the real formats, the
models, the self-attention penalty, metrics, the attention plot, and short training runs."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from gadei import task as T
from qa_tasks.text_classification import qc as qc_mod
from qa_tasks.text_classification.clinc import read_clinc
from qa_tasks.text_classification.nlc import NLC, oos_metrics
from qa_tasks.text_classification.self_attentive import SelfAttentiveClassifier, attention_penalty
from qa_tasks.text_classification.qc import QC
from qa_tasks.text_classification.trec import read_trec
from qa_tasks.text_classification.kim_cnn import KimCNN
from qa_tasks.text_classification.text import UNK_ID, Vocab, pad_batch, shard_batches, tokenize
from tests.helpers import plain_train

# -- fixtures in the real formats ---------------------------------------------------------------
TREC_TRAIN = [
    b"DESC:manner How did serfdom develop in and then leave Russia ?",
    b"ENTY:cremat What films featured the character Popeye Doyle ?",
    b"LOC:city Which city has the oldest relationship as a sister\xf0city with Los Angeles ?",  # latin-1
    "HUM:ind Who was Jos\u00e9 Mart\u00ed ?".encode("utf-8"),                                   # utf-8
    b"NUM:date When was Ozzy Osbourne born ?",
    b"ABBR:exp What does the abbreviation AIDS stand for ?",
    b"HUM:ind Who killed Gandhi ?",
    b"LOC:country What country 's flag is red and white ?",
    b"NUM:count How many people live in Chile ?",
    b"DESC:def What is a `` fear of heights '' ?",
]
TREC_TEST = [b"NUM:dist How far is it from Denver to Aspen ?", b"LOC:city What city is the Alamo in ?"]


def write_trec(root: Path, train=TREC_TRAIN, test=TREC_TEST) -> Path:
    folder = root / "trec"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_5500.label").write_bytes(b"\n".join(train) + b"\n")
    (folder / "TREC_10.label").write_bytes(b"\n".join(test) + b"\n")
    return root


CLINC = {
    "train": [["what is my balance", "balance"], ["how much money do i have", "balance"],
              ["set an alarm for seven", "alarm"], ["wake me up at six", "alarm"],
              ["how do you say hello in french", "translate"], ["translate thanks to german", "translate"]],
    "val": [["tell me my balance", "balance"], ["set alarm for noon", "alarm"], ["say cat in spanish", "translate"]],
    "oos_train": [["who won the game last night", "oos"], ["tell me a fun fact", "oos"]],
    "oos_val": [["what is the meaning of life", "oos"]],
}


def write_clinc(root: Path, data=None, raw: bytes | None = None) -> Path:
    folder = root / "clinc150"
    folder.mkdir(parents=True, exist_ok=True)
    payload = raw if raw is not None else json.dumps(CLINC if data is None else data).encode()
    (folder / "data_full.json.gz").write_bytes(gzip.compress(payload))
    return root


# -- tokenizer, vocabulary, batching ------------------------------------------------------------
def test_tokenizer_lowercases_and_splits_as_documented():
    assert tokenize("Who's the ``King'' of 1969?") == ["who", "'s", "the", "`", "`", "king", "'", "'",
                                                      "of", "1969", "?"]
    assert tokenize("  don't  STOP\tnow ") == ["don", "'t", "stop", "now"]
    assert tokenize("sister\xf0city") == ["sister", "\xf0", "city"]
    assert tokenize("") == []


def test_tokenizer_and_vocab_are_deterministic():
    texts = ["b a c a", "c b a", "d"]
    first = Vocab.build([tokenize(t) for t in texts])
    again = Vocab.build([tokenize(t) for t in reversed(texts)])
    # a: 3, b: 2, c: 2 (tie broken alphabetically), d: 1
    assert first.itos == again.itos == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert first.encode(["a", "zzz", "d"]) == [2, UNK_ID, 5]
    assert Vocab.build([tokenize(t) for t in texts], min_count=2).itos == ["<pad>", "<unk>", "a", "b", "c"]
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build([], min_count=0)


def test_pad_batch_and_shards():
    ids, lengths = pad_batch([[5, 6, 7], [8], []], min_len=4)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]]
    assert lengths.tolist() == [3, 1, 1]
    shards = [shard_batches(23, i, 3, seed=7, batch_size=4) for i in range(3)]
    seen = sorted(int(j) for s in shards for b in s for j in b)
    assert seen == list(range(23))                         # disjoint, covering everything
    assert all(int(j) % 3 == i for i, s in enumerate(shards) for b in s for j in b)
    assert [b.tolist() for b in shards[1]] == [b.tolist() for b in shard_batches(23, 1, 3, 7, 4)]
    assert [b.tolist() for b in shards[1]] != [b.tolist() for b in shard_batches(23, 1, 3, 8, 4)]
    with pytest.raises(ValueError, match="learner"):
        shard_batches(10, 3, 3, 0, 4)


def test_cnn_ignores_batch_padding():
    torch.manual_seed(0)
    model = KimCNN(20, 3, embed_dim=8, maps=4).eval()
    alone = model(*pad_batch([[4, 5]]))
    batched = model(*pad_batch([[4, 5], list(range(2, 15))]))
    torch.testing.assert_close(alone[0], batched[0])


# -- TREC ---------------------------------------------------------------------------------------
def test_read_trec_handles_latin1_and_utf8(tmp_path):
    rows = read_trec(write_trec(tmp_path) / "trec" / "train_5500.label")
    assert len(rows) == len(TREC_TRAIN)
    assert rows[0] == ("DESC", "DESC:manner", "How did serfdom develop in and then leave Russia ?")
    assert rows[2][2] == "Which city has the oldest relationship as a sister\xf0city with Los Angeles ?"
    assert rows[3][2] == "Who was Jos\u00e9 Mart\u00ed ?"


@pytest.mark.parametrize("line, message", [
    (b"DESC:manner", r"train_5500.label:3: expected 'COARSE:fine question'"),
    (b"How did serfdom develop ?", r"train_5500.label:3: expected"),
    (b"DESC How did serfdom develop ?", r"train_5500.label:3: expected"),
    (b"WHAT:ever Is this a class ?", r"train_5500.label:3: unknown coarse label 'WHAT'"),
])
def test_read_trec_malformed_line_names_file_and_line(tmp_path, line, message):
    root = write_trec(tmp_path, train=TREC_TRAIN[:2] + [line] + TREC_TRAIN[2:])
    with pytest.raises(ValueError, match=message):
        read_trec(root / "trec" / "train_5500.label")


def test_qc_on_fixture_files(tmp_path):
    task = QC(data="real", data_dir=str(write_trec(tmp_path)), valid_fraction=0.2, min_count=1)
    assert task.eval_split == "test"
    assert [len(task.texts(s)) for s in ("train", "valid", "test")] == [8, 2, 2]
    assert task.label_names == list(qc_mod.COARSE)
    # the held-out part is fixed: the same in a second instance (another process)
    again = QC(data="real", data_dir=str(tmp_path), valid_fraction=0.2, min_count=1)
    assert again.texts("valid") == task.texts("valid") and again.vocab.itos == task.vocab.itos
    # the vocabulary comes from the training split only
    train_words = set(tokenize(" ".join(task.texts("train"))))
    assert set(task.vocab.itos[2:]) == train_words
    assert "aspen" not in task.vocab.stoi  # a test-only word
    torch.manual_seed(0)
    metrics = task.evaluate(task.build_model(), "test")
    assert set(metrics) == {"accuracy", "loss"} and 0.0 <= metrics["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="no split 'dev'"):
        task.evaluate(task.build_model(), "dev")


def test_qc_fine_labels_unknown_in_training_are_an_error(tmp_path):
    task = QC(data="real", data_dir=str(write_trec(tmp_path)), fine=True, valid_fraction=0.0)
    with pytest.raises(ValueError, match=r"labels the training split lacks: \['NUM:dist'\]"):
        task.build_model()
    write_trec(tmp_path, test=[b"NUM:date When was Gandhi born ?"])
    task = QC(data="real", data_dir=str(tmp_path), fine=True, valid_fraction=0.0)
    assert "LOC:city" in task.label_names and task.build_model().out.out_features == len(task.label_names)


def test_qc_options_validate_and_missing_data_is_explained(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="widths must be comma-separated"):
        QC(widths="3;4")
    with pytest.raises(ValueError, match="valid_fraction"):
        QC(valid_fraction=1.0)
    with pytest.raises(ValueError, match="has no option"):
        T.build("qc", dict(batch_size=3))
    with pytest.raises(FileNotFoundError, match="trec/"):
        QC(data="real", data_dir=str(tmp_path)).build_model()
    monkeypatch.delenv("GADEI_DATA", raising=False)
    assert not QC().real  # auto without a data directory: generated


# -- CLINC150 -----------------------------------------------------------------------------------
def test_read_clinc_withheld_and_full_release(tmp_path):
    splits = read_clinc(write_clinc(tmp_path) / "clinc150" / "data_full.json.gz")
    assert sorted(splits) == ["oos_train", "oos_val", "train", "val"]
    assert splits["train"][0] == ("what is my balance", "balance")
    full = dict(CLINC, test=[["balance please", "balance"]], oos_test=[["sing a song", "oos"]])
    task = NLC(data="real", data_dir=str(write_clinc(tmp_path / "full", full)))
    assert task.split_names() == ["train", "valid", "test"]
    assert task.texts("test") == ["balance please", "sing a song"]
    torch.manual_seed(0)
    metrics = task.evaluate(task.build_model(), "test")
    assert set(metrics) == {"in_scope_accuracy", "oos_recall", "accuracy"}


@pytest.mark.parametrize("data, message", [
    ({k: v for k, v in CLINC.items() if k != "oos_val"}, "missing split"),
    (dict(CLINC, train=[["ok", "balance"], ["no intent"]]), r"split 'train' record 1: expected \[utterance, intent\]"),
    (dict(CLINC, val={"a": 1}), "split 'val' must be a list"),
    (dict(CLINC, oos_val=[["what", "balance"]]), "split 'oos_val' record 0: intent must be 'oos'"),
    (dict(CLINC, test=[["balance please", "balance"]]), "has test but not the other"),
    ([1, 2], "expected a JSON object"),
])
def test_read_clinc_malformed(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        read_clinc(write_clinc(tmp_path, data) / "clinc150" / "data_full.json.gz")


def test_read_clinc_not_json(tmp_path):
    with pytest.raises(ValueError, match="not a .*JSON file"):
        read_clinc(write_clinc(tmp_path, raw=b"{not json") / "clinc150" / "data_full.json.gz")


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


# -- self-attention -----------------------------------------------------------------------------
def test_penalty_is_zero_for_identity_attention():
    A = torch.zeros(2, 3, 5)
    A[0, [0, 1, 2], [0, 1, 2]] = 1.0   # each hop on its own token: A A^T = I
    A[1, [0, 1, 2], [4, 2, 0]] = 1.0
    assert float(attention_penalty(A)) == 0.0


def test_penalty_computed_example():
    # A = [[.5, .5], [.5, .5]]: A A^T = [[.5, .5], [.5, .5]], minus I = [[-.5, .5], [.5, -.5]], ||.||^2 = 1
    same = torch.full((1, 2, 2), 0.5)
    assert float(attention_penalty(same)) == pytest.approx(1.0)
    # A = [[1, 0], [1, 0]] (both hops on token 0): A A^T - I = [[0, 1], [1, 0]] -> 2; batch mean (1 + 2) / 2
    both = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert float(attention_penalty(torch.cat([same, both]))) == pytest.approx(1.5)


def test_self_attention_is_a_distribution_over_real_tokens_only():
    torch.manual_seed(0)
    model = SelfAttentiveClassifier(30, 4, embed_dim=8, hidden=6, attention_dim=5, hops=3, mlp_hidden=7).eval()
    ids, lengths = pad_batch([[3, 4], list(range(2, 12))])
    with torch.no_grad():
        logits, A = model.forward_with_attention(ids, lengths)
        alone, A_alone = model.forward_with_attention(*pad_batch([[3, 4]]))
    assert logits.shape == (2, 4) and A.shape == (2, 3, 10)
    torch.testing.assert_close(A.sum(dim=2), torch.ones(2, 3))
    assert float(A[0, :, 2:].abs().sum()) == 0.0
    torch.testing.assert_close(alone[0], logits[0])
    torch.testing.assert_close(A_alone[0], A[0, :, :2])


def test_oos_metrics_computed_example():
    labels = torch.tensor([0, 1, 2, 3, 3])           # 3 = oos
    predicted = torch.tensor([0, 3, 2, 3, 1])
    m = oos_metrics(predicted, labels, oos_id=3)
    assert m == pytest.approx({"in_scope_accuracy": 2 / 3, "oos_recall": 1 / 2, "accuracy": 3 / 5})


# -- training on the generated variants ---------------------------------------------------------


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.timeout(60)
def test_qc_generated_learns():
    task = QC(data="generated", embed_dim=32, filters=16, batch=32)
    batches = list(task.batches(1, 2, seed=3))
    assert sum(task.batch_size(b) for b in batches) == len(task.texts("train")) // 2
    losses, model = plain_train(task, steps=60)
    assert mean(losses[-10:]) < 0.5 * mean(losses[:10])
    assert task.evaluate(model, "test")["accuracy"] > 0.8


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


@pytest.mark.timeout(60)
def test_render_attention_writes_png(tmp_path):
    from qa_tasks.text_classification.attention import attention_weights, render_attention
    task = NLC(data="generated", embed_dim=16, hidden=8, attention_dim=8, hops=2, mlp_hidden=16)
    torch.manual_seed(0)
    model = task.build_model()
    rows = attention_weights(task, model, ["what is my balance", "set an alarm for seven please"], hop=1)
    assert [len(t) for t, _, _ in rows] == [4, 6]
    assert all(abs(float(w.sum()) - 1.0) < 1e-5 for _, w, _ in rows)
    path = render_attention(task, model, ["what is my balance", "zzz unknown words"], tmp_path / "a" / "att.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TypeError, match="no attention"):
        render_attention(NLC(data="generated", model="cnn"), KimCNN(5, 2), ["x"], tmp_path / "b.png")
    with pytest.raises(ValueError, match="hop must be"):
        attention_weights(task, model, ["x"], hop=5)


@pytest.mark.timeout(120)
def test_qc_trains_through_gadei_with_two_learners(tmp_path):
    """The same task through the shared-memory PS: 2 learner processes, Adam on the server."""
    gadei = pytest.importorskip("gadei")
    from gadei import checkpoint
    options = dict(data="generated", embed_dim=32, filters=16, batch=32)
    task = QC(**options)
    torch.manual_seed(0)
    before = task.evaluate(task.build_model(), "test")
    summary = gadei.train("qc", task_options=options, optimizer="adam", learners=2, steps=60,
                          out=tmp_path / "run", lr=5e-3)
    after = summary["final_metrics"]
    assert summary["updates_applied"] == 60
    assert summary["restarts"] == {"ps": 0, "learners": 0}, "a process crashed: see the logs/ under out"
    assert after["loss"] < 0.5 * before["loss"] and after["accuracy"] > 0.8
    # the checkpoint holds the model's weights under its parameter names, loadable without pickle
    model = task.build_model()
    weights = checkpoint.load(tmp_path / "run")["weights"]
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    assert task.evaluate(model, "test")["accuracy"] == pytest.approx(after["accuracy"])
