"""Answer selection on InsuranceQA V2 with shared-weight CNN towers.

Feng, Xiang, Glass, Wang, Zhou, "Applying deep learning to answer selection: a study and an
open task", ASRU 2015 (arXiv:1508.01585), architecture II: the question and the answer go
through the same tower

    embedding -> hidden layer, tanh -> convolution (one or more widths) -> max over time -> tanh

the embedding starting, as theirs, from word2vec trained on the corpus (qa_tasks.word2vec).
The two encodings are compared with cosine (the default: measured better here, see
docs/results/qa.md) or GESD (Feng et al.'s best),

    GESD(x, y) = 1 / (1 + ||x - y||) * 1 / (1 + exp(-gamma (x.y + c)))     (gamma = 1, c = 1).

Training minimises the margin ranking loss

    L = max(0, m - s(q, a+) + s(q, a-))

over (question, ground-truth answer) pairs. The reference samples negatives from the whole
answer collection until one violates the margin (up to a cap). Here that search is one tensor
operation: each batch draws `negatives` answers, shared by its questions, scores every question
against all of them, and uses each question's highest-scoring negative that is not one of its
ground-truth answers. If any negative violates the margin, the hardest one does, so the loss is
the one the reference's search would reach with the same draws; sharing the draws costs one
tower pass over `negatives` answers per batch instead of batch x negatives. Optionally
(`pool_negatives`) each question also draws a few negatives from its own train SOLR pool, the
kind of lexically close answers the evaluation pools hold.

Metric: top-1 accuracy over each question's candidate pool (V2 ``*.500.pool.solr.<split>``).
The SOLR pools do not always hold the ground truth (valid: 79.6 % of questions have one in the
pool), so the candidates are the pool plus the question's ground-truth answers, as in Feng et
al.'s own pools ("pool of 500 candidates including the ground truth"); a question counts as
right when its best ground-truth answer scores strictly above every other candidate (a tie is
wrong, so a model that scores everything equal gets 0, not the answer that happens to come
first). ``top1_raw_pool`` is the same over the SOLR pool exactly as released (a question whose
pool lacks the truth is wrong).

Baseline: IDF-weighted bag-of-words cosine (idf from the answer collection), scored and ranked
by the same candidate/top-1 code; `evaluate` reports it beside the model as ``bow_top1``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from qa_tasks import insuranceqa, word2vec
from qa_tasks.common import checked_options, use_real_data
from qa_tasks.insuranceqa import PAD, UNK, Corpus, Ragged, Split


# -- similarities and loss (pure functions: tests call them on hand-computed examples) -----------

def gesd(x: torch.Tensor, y: torch.Tensor, *, gamma: float = 1.0, c: float = 1.0) -> torch.Tensor:
    """Geometric mean of Euclidean and Sigmoid Dot product, over the last dimension (broadcasts).

    GESD(x, y) = 1 / (1 + ||x - y||) * 1 / (1 + exp(-gamma (x.y + c)))   (Feng et al. 2015)
    """
    # clamp before the square root: its gradient at 0 is infinite (x == y happens at init)
    dist = (x - y).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    return 1.0 / (1.0 + dist) * torch.sigmoid(gamma * ((x * y).sum(-1) + c))


def cosine(x: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """x.y / (||x|| ||y||) over the last dimension (broadcasts); 0 when either vector is 0."""
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(eps)


SIMILARITIES = ("gesd", "cosine")
EMBEDDINGS = ("word2vec", "random")


def ranking_loss(pos: torch.Tensor, neg: torch.Tensor, neg_ok: torch.Tensor, margin: float,
                 order: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over questions of max(0, m - s(q, a+) + s(q, a-)), a- chosen among K sampled answers.

    pos: (B,) scores of the ground-truth answers; neg: (B, K) scores of the sampled answers;
    neg_ok: (B, K) bool, False where the sampled answer is one of that question's ground truths
    (then it is no negative). A question with no usable negative contributes 0.

    order None: a- is the hardest negative (highest score). order (B, K) int, a permutation of
    0..K-1 per question: a- is the first negative in that order that violates the margin, as the
    reference implementation's "sample until one violates" would find; when none violates the
    loss is 0 for that question, as it is for the hardest.
    """
    if order is None:
        chosen = neg.masked_fill(~neg_ok, -math.inf).max(dim=1).values          # (B,)
    else:
        violates = neg_ok & (margin - pos[:, None] + neg > 0)                   # (B, K)
        # the violator with the smallest position in the search order (K where none violates)
        first = torch.where(violates, order, neg.shape[1]).argmin(dim=1)        # (B,)
        chosen = neg.gather(1, first[:, None]).squeeze(1)
        chosen = chosen.masked_fill(~violates.any(dim=1), -math.inf)
    return torch.clamp(margin - pos + chosen, min=0.0).mean()


# -- the model ----------------------------------------------------------------------------------

class Tower(nn.Module):
    """embedding -> hidden (tanh) -> conv per width -> max over time -> tanh; one for Q and A."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, filters: int, widths: tuple[int, ...]):
        super().__init__()
        self.widths = widths
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.hidden = nn.Linear(embed_dim, hidden)
        self.convs = nn.ModuleList(nn.Conv1d(hidden, filters, w) for w in widths)

    @property
    def dim(self) -> int:
        return sum(conv.out_channels for conv in self.convs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids, right-padded with PAD, L >= max(widths) -> (B, filters * len(widths))."""
        lengths = (tokens != PAD).sum(1)                              # (B,)
        h = torch.tanh(self.hidden(self.embed(tokens)))               # (B, L, H)
        h = h.transpose(1, 2)                                         # (B, H, L)
        pooled = []
        for w, conv in zip(self.widths, self.convs):
            c = conv(h)                                               # (B, F, L - w + 1)
            # max only over windows that start inside the text (at least one, for short texts),
            # so padding never wins the max and the length of the batch's padding is irrelevant
            starts = torch.arange(c.shape[2], device=c.device)
            valid = starts[None, :] < (lengths - w + 1).clamp_min(1)[:, None]   # (B, L - w + 1)
            pooled.append(c.masked_fill(~valid[:, None, :], -math.inf).max(dim=2).values)
        return torch.tanh(torch.cat(pooled, dim=1))


class AnswerSelector(nn.Module):
    """The shared tower plus the similarity; `forward(q, a)` scores rows pairwise."""

    def __init__(self, tower: Tower, similarity: str, gamma: float, c: float):
        super().__init__()
        self.tower = tower
        self.similarity, self.gamma, self.c = similarity, gamma, c

    def score(self, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Similarity of encoded vectors over the last dimension (broadcasts)."""
        if self.similarity == "gesd":
            return gesd(q, a, gamma=self.gamma, c=self.c)
        return cosine(q, a)

    def forward(self, q_tokens: torch.Tensor, a_tokens: torch.Tensor) -> torch.Tensor:
        return self.score(self.tower(q_tokens), self.tower(a_tokens))


# -- pools and top-1: one code path for the model and the baseline ------------------------------------

def candidates(split: Split, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `n` questions' candidates: each pool plus any ground truth it lacks.

    Returns cands (n, P) int64 answer rows, -1 as padding; is_truth (n, P) bool; in_pool (n, P)
    bool (the candidate is in the SOLR pool as released).
    """
    rows = []
    for i in range(n):
        pool = list(dict.fromkeys(split.pool.row(i).tolist()))   # dedupe, keep order
        truth = split.truth.row(i).tolist()
        rows.append((pool + [a for a in truth if a not in set(pool)], len(pool), set(truth)))
    width = max(len(r) for r, _, _ in rows)
    cands = np.full((n, width), -1, dtype=np.int64)
    is_truth = np.zeros((n, width), dtype=bool)
    in_pool = np.zeros((n, width), dtype=bool)
    for i, (r, pool_len, truth) in enumerate(rows):
        cands[i, :len(r)] = r
        is_truth[i, :len(r)] = [a in truth for a in r]
        in_pool[i, :pool_len] = True
    return cands, is_truth, in_pool


def top1_correct(scores: np.ndarray, is_truth: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per question: does its best ground-truth candidate score strictly above every other one?

    scores, is_truth, usable: (n, P). Candidates with usable False are ignored; a question with
    no usable ground truth is wrong.
    """
    best_truth = np.where(is_truth & usable, scores, -np.inf).max(axis=1)
    best_other = np.where(~is_truth & usable, scores, -np.inf).max(axis=1)
    return (best_truth > best_other) & np.isfinite(best_truth)


def pool_metrics(score_fn, split: Split, n: int, *, chunk: int = 64) -> dict[str, float]:
    """top-1 over the first `n` questions of `split`; `score_fn(q_rows (c,), cands (c, P)) -> (c, P)`
    scores question rows against answer rows (cands may hold -1 padding: score anything)."""
    cands, is_truth, in_pool = candidates(split, n)
    scores = np.concatenate([np.asarray(score_fn(np.arange(s, min(s + chunk, n)), cands[s:s + chunk]),
                                        dtype=np.float64) for s in range(0, n, chunk)])
    real = cands >= 0
    return {"top1": float(top1_correct(scores, is_truth, real).mean()),
            "top1_raw_pool": float(top1_correct(scores, is_truth, in_pool).mean()),
            "pool_recall": float((is_truth & in_pool).any(axis=1).mean())}


def idf_bow(corpus: Corpus, questions: Ragged) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """L2-normalised tf-idf rows for the questions and all answers; idf = log(N / df) over the
    N answers (a word no answer holds gets weight 0: it cannot match anything)."""
    def counts(ragged: Ragged) -> sp.csr_matrix:
        # copies: scipy keeps the index arrays it is given and sum_duplicates() sorts them in
        # place, which would reorder the corpus' tokens under the model
        m = sp.csr_matrix((np.ones(len(ragged.values), np.float64), ragged.values.copy(),
                           ragged.offsets.copy()), shape=(len(ragged), len(corpus.vocab)))
        m.sum_duplicates()
        return m

    answers = counts(corpus.answers)
    df = np.bincount(answers.indices, minlength=len(corpus.vocab))
    idf = np.where(df > 0, np.log(len(corpus.answers) / np.maximum(df, 1)), 0.0)
    idf[[PAD, UNK]] = 0.0

    def normalised(m: sp.csr_matrix) -> sp.csr_matrix:
        m = m @ sp.diags(idf)
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
        return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m

    return normalised(counts(questions)).tocsr(), normalised(answers).tocsr()


# -- the generated variant ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)   # deterministic and never modified: build each seed once
def generated_corpus(seed: int = 0, *, topics: int = 120, answers: int = 300, train: int = 1500,
                     valid: int = 200, pool: int = 20) -> Corpus:
    """A small synthetic corpus where the right answer shares content with the question.

    Each answer is about 3 content words (repeated among filler words). A question about it
    names 2 of them, each replaced half the time by a question-only synonym ("q:<word>") that
    no answer contains: bag-of-words overlap finds part of the signal, a trained model can
    learn the synonyms. Pools: the truth plus `pool - 1` other answers. Deterministic in `seed`.
    """
    rng = np.random.default_rng(seed)
    filler = [f"f{i}" for i in range(20)]
    content = [f"w{i}" for i in range(topics)]
    vocab = ["<pad>", "<unk>"] + filler + content + [f"q:{w}" for w in content]
    fid = {w: i for i, w in enumerate(vocab)}
    topic = [rng.choice(topics, 3, replace=False) for _ in range(answers)]

    def answer_text(t):
        words = [fid[content[k]] for k in t for _ in range(3)] + list(rng.choice(20, 20) + 2)
        return rng.permutation(words)

    def question(t):
        words = [fid[("q:" if rng.random() < 0.5 else "") + content[k]] for k in rng.choice(t, 2, replace=False)]
        return rng.permutation(words + list(rng.choice(20, 4) + 2))

    def split(n):
        truth = rng.integers(0, answers, n)
        pools = [rng.permutation(np.concatenate([[a], rng.choice(np.delete(np.arange(answers), a), pool - 1, replace=False)]))
                 for a in truth]
        return Split(questions=Ragged.from_rows([question(topic[a]) for a in truth]),
                     truth=Ragged.from_rows([[a] for a in truth]), pool=Ragged.from_rows(pools))

    return Corpus(vocab=vocab, answers=Ragged.from_rows([answer_text(t) for t in topic]),
                  answer_labels=np.arange(1, answers + 1, dtype=np.int64),
                  splits={"train": split(train), "valid": split(valid), "test": split(valid)})


# -- the task -----------------------------------------------------------------------------------

class QA:
    """InsuranceQA V2 answer selection (Feng et al. 2015); see the module docstring.

    The defaults are the configuration measured in docs/results/qa.md: smaller than Feng et
    al.'s (hidden 200, 4000 filters, answers of 200 tokens) so an epoch fits a shared 2-core CPU.

    Options (``gadei train --task qa --some-option V``):
        data, data_dir: "real" (the ``insuranceqa`` folder under data_dir or $GADEI_DATA),
            "generated" (small synthetic corpus, trains in seconds) or "auto".
        pool: candidates per question in evaluation (V2 ships 100 and 500 for valid/test).
        question_len, answer_len: tokens kept (truncation; a batch is padded to its longest).
        embeddings: "word2vec" (the tower starts from skip-gram vectors trained on the answers
            and train questions, as Feng et al.'s; qa_tasks.word2vec) or "random".
        embed_dim, hidden, filters, widths: tower sizes; `filters` per convolution width,
            `widths` comma-separated ("2,3"); the encoding has filters * len(widths) dimensions.
        similarity: "gesd" (gamma, c) or "cosine".
        margin: m of the ranking loss.
        negatives: answers sampled per batch from the whole collection, shared by its questions.
        pool_negatives: per question, this many more from its own train SOLR pool (negatives
            lexically close to the question, like the evaluation's candidates); costs
            batch x pool_negatives more answer encodings per step.
        pick: which negative a question trains on: "first" (the first, in a random order, that
            violates the margin, as the reference) or "hardest" (the highest-scoring; from a
            random start it collapses all encodings together: measured, loss stuck at m).
        batch: questions per batch.
        eval_questions: evaluate on the first N questions of a split (0 = all). The full valid
            split encodes every answer the pools hold (~27k); a few hundred questions give a
            quick, noisier reading during training. Final numbers use 0.
        min_count: a word must occur this often (train questions + answers) to get its own id.
        generated_seed: seed of the generated corpus.
    """

    eval_split = "valid"

    def __init__(self, *, data: str = "auto", data_dir: str | None = None, pool: int = 500,
                 question_len: int = 30, answer_len: int = 60, embed_dim: int = 100,
                 embeddings: str = "word2vec", hidden: int = 64, filters: int = 128, widths: str = "2",
                 similarity: str = "cosine", gamma: float = 1.0, c: float = 1.0, margin: float = 0.2,
                 negatives: int = 50, pool_negatives: int = 0, pick: str = "first", batch: int = 64,
                 eval_questions: int = 0, min_count: int = 2, generated_seed: int = 0):
        self._widths = checked_options(widths, pool=pool, question_len=question_len, answer_len=answer_len,
                                       embed_dim=embed_dim, hidden=hidden, filters=filters,
                                       negatives=negatives, batch=batch, min_count=min_count)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, not {similarity!r}")
        if embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, not {embeddings!r}")
        if pool_negatives < 0:
            raise ValueError(f"pool_negatives must be 0 or more, not {pool_negatives}")
        if pick not in ("first", "hardest"):
            raise ValueError(f"pick must be 'first' (first margin violator, as the reference) or "
                             f"'hardest' (highest-scoring negative), not {pick!r}")
        if not margin > 0:
            raise ValueError(f"margin must be positive, not {margin}")
        if eval_questions < 0:
            raise ValueError(f"eval_questions must be 0 (all) or a positive count, not {eval_questions}")
        if max(self._widths) > min(question_len, answer_len):
            raise ValueError(f"the widest convolution ({max(self._widths)}) must fit in question_len "
                             f"({question_len}) and answer_len ({answer_len})")
        # every option is kept under its own name, unchanged: the runtime rebuilds the task in
        # each learner process from these attributes (gadei.tasks.task_spec)
        self.data, self.data_dir, self.pool, self.min_count = data, data_dir, pool, min_count
        self.generated_seed, self.widths = generated_seed, widths
        self.embed_dim, self.embeddings, self.hidden, self.filters = embed_dim, embeddings, hidden, filters
        self.similarity, self.gamma, self.c, self.margin = similarity, gamma, c, margin
        self.pool_negatives = pool_negatives
        self.negatives, self.pick, self.batch, self.eval_questions = negatives, pick, batch, eval_questions
        self.question_len, self.answer_len = question_len, answer_len

        if use_real_data(data, data_dir):
            self.corpus = insuranceqa.load(data_dir, pool=pool, min_count=min_count)
        else:
            self.corpus = generated_corpus(generated_seed)
        # padded token matrices, sliced per batch (and trimmed to the batch's longest row)
        self._answers = self.corpus.answers.padded(answer_len)
        self._answer_lengths = np.minimum(self.corpus.answers.lengths(), answer_len)
        train = self.corpus.splits["train"]
        self._train_questions = train.questions.padded(question_len)
        # training pairs: (question row, ground-truth answer row), one per ground truth
        self._pairs = np.array([(q, a) for q in range(len(train)) for a in train.truth.row(q)],
                               dtype=np.int64).reshape(-1, 2)
        # each train question's SOLR pool without its ground truth: negatives like the ones the
        # evaluation pools hold (lexically close to the question)
        self._pooled = []
        if pool_negatives:
            for q in range(len(train)):
                truth = set(train.truth.row(q).tolist())
                self._pooled.append(np.array([a for a in train.pool.row(q).tolist() if a not in truth],
                                             dtype=np.int64))
        self._bow: dict[tuple[str, int], dict[str, float]] = {}

    # -- the task interface --

    def build_model(self) -> nn.Module:
        tower = Tower(len(self.corpus.vocab), self.embed_dim, self.hidden, self.filters, self._widths)
        if self.embeddings == "word2vec":
            with torch.no_grad():
                tower.embed.weight.copy_(torch.from_numpy(self.word_vectors()))
        return AnswerSelector(tower, self.similarity, self.gamma, self.c)

    def word_vectors(self) -> np.ndarray:
        """word2vec over the answer collection and the train questions (the texts the vocabulary
        comes from), (vocab, embed_dim); cached, so only the first process pays for it."""
        train = self.corpus.splits["train"].questions
        texts = [self.corpus.answers.row(i) for i in range(len(self.corpus.answers))]
        texts += [train.row(i) for i in range(len(train))]
        return word2vec.cached(texts, len(self.corpus.vocab), self.embed_dim, pad=PAD)

    def _trim(self, tokens: np.ndarray) -> torch.Tensor:
        """Drop the padding columns no row of the batch uses (keeping room for the widest filter)."""
        used = max(int((tokens != PAD).sum(1).max(initial=0)), max(self._widths))
        return torch.from_numpy(np.ascontiguousarray(tokens[:, :used]))

    def batches(self, learner: int, learners: int, seed: int):
        """One epoch of this learner's pairs: (q (B, Lq), a+ (B, La), shared negatives (K, La),
        pooled negatives (B * j, La), usable-negative mask (B, K + j), search order (B, K + j)).
        j is `pool_negatives` (0: the pooled tensor is empty).

        Learner i of n takes every n-th pair (disjoint shards, whatever seeds the learners get),
        shuffled by (seed, learner); negatives are drawn by the same generator.
        """
        if not 0 <= learner < learners:
            raise ValueError(f"learner must be in 0..{learners - 1}, not {learner}")
        rng = np.random.default_rng([seed, learner])
        shard = self._pairs[learner::learners]
        shard = shard[rng.permutation(len(shard))]
        truth = self.corpus.splits["train"].truth
        n_answers = len(self.corpus.answers)
        k, j = min(self.negatives, n_answers), self.pool_negatives
        for start in range(0, len(shard), self.batch):
            q_rows, a_rows = shard[start:start + self.batch].T
            neg_rows = rng.choice(n_answers, k, replace=False)
            neg_ok = np.stack([~np.isin(neg_rows, truth.row(q)) for q in q_rows])   # (B, K)
            # j more per question from its own SOLR pool (a question without pooled negatives
            # gets random answers), row-major: question b's are rows b*j .. b*j + j - 1
            own = np.array([rng.choice(self._pooled[q] if len(self._pooled[q]) else n_answers, j)
                            for q in q_rows] if j else [], dtype=np.int64).reshape(-1)
            own_ok = np.array([~np.isin(own[b * j:(b + 1) * j], truth.row(q)) for b, q in enumerate(q_rows)],
                              dtype=bool).reshape(len(q_rows), j)
            # each question searches its K + j candidates in its own random order
            order = rng.permuted(np.tile(np.arange(k + j), (len(q_rows), 1)), axis=1)    # (B, K + j)
            yield (self._trim(self._train_questions[q_rows]), self._trim(self._answers[a_rows]),
                   self._trim(self._answers[neg_rows]), self._trim(self._answers[own]),
                   torch.from_numpy(np.concatenate([neg_ok, own_ok], axis=1)),
                   torch.from_numpy(order))

    def batch_size(self, batch) -> int:
        return len(batch[0])

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        q_tokens, a_tokens, neg_tokens, own_tokens, neg_ok, order = batch
        q = model.tower(q_tokens)                                     # (B, D)
        pos = model.score(q, model.tower(a_tokens))                   # (B,)
        neg = model.score(q[:, None, :], model.tower(neg_tokens)[None, :, :])   # (B, K)
        if self.pool_negatives:
            own = model.tower(own_tokens).view(len(q), self.pool_negatives, -1)    # (B, j, D)
            neg = torch.cat([neg, model.score(q[:, None, :], own)], dim=1)         # (B, K + j)
        return ranking_loss(pos, neg, neg_ok, self.margin, order if self.pick == "first" else None)

    def _split(self, split: str) -> tuple[Split, int]:
        if split not in self.corpus.splits:
            raise ValueError(f"no split {split!r} in this InsuranceQA copy (it has "
                             f"{', '.join(sorted(self.corpus.splits))}; test is withheld from the "
                             "shared copy)")
        data = self.corpus.splits[split]
        n = len(data) if self.eval_questions == 0 else min(self.eval_questions, len(data))
        return data, n

    @torch.no_grad()
    def _encode(self, model: nn.Module, tokens: np.ndarray, lengths: np.ndarray, chunk: int = 256) -> torch.Tensor:
        """Encode rows in length order (each chunk padded only to its own longest row)."""
        order = np.argsort(lengths, kind="stable")
        out = torch.empty(len(tokens), model.tower.dim)
        for s in range(0, len(order), chunk):
            rows = order[s:s + chunk]
            out[torch.from_numpy(rows)] = model.tower(self._trim(tokens[rows]))
        return out

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """top-1 over the pools of `split` (first `eval_questions`), model and BoW baseline."""
        data, n = self._split(split)
        was_training = model.training
        model.eval()
        try:
            cands, _, _ = candidates(data, n)
            # encode each answer the pools hold once, then score pools by lookup
            needed = np.unique(cands[cands >= 0])
            answer_vecs = torch.zeros(len(self.corpus.answers), model.tower.dim)
            answer_vecs[torch.from_numpy(needed)] = self._encode(model, self._answers[needed],
                                                                 self._answer_lengths[needed])
            q_tokens = data.questions.padded(self.question_len)[:n]
            q_vecs = self._encode(model, q_tokens, (q_tokens != PAD).sum(1))

            def model_scores(q_rows, cand_rows):
                with torch.no_grad():
                    a = answer_vecs[torch.from_numpy(np.maximum(cand_rows, 0))]     # (c, P, D)
                    return model.score(q_vecs[torch.from_numpy(q_rows)][:, None, :], a).numpy()

            metrics = pool_metrics(model_scores, data, n)
        finally:
            model.train(was_training)
        metrics.update(self.bow_metrics(split))
        metrics["questions"] = float(n)
        return metrics

    def bow_metrics(self, split: str) -> dict[str, float]:
        """The IDF bag-of-words cosine baseline through the same pool code (cached per split)."""
        data, n = self._split(split)
        if (split, n) not in self._bow:
            q_vecs, a_vecs = idf_bow(self.corpus, data.questions)

            def bow_scores(q_rows, cand_rows):
                flat = np.maximum(cand_rows, 0).ravel()
                q = q_vecs[np.repeat(q_rows, cand_rows.shape[1])]
                return np.asarray(q.multiply(a_vecs[flat]).sum(axis=1)).reshape(cand_rows.shape)

            m = pool_metrics(bow_scores, data, n)
            self._bow[(split, n)] = {"bow_top1": m["top1"], "bow_top1_raw_pool": m["top1_raw_pool"]}
        return self._bow[(split, n)]
