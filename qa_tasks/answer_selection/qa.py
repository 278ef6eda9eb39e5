"""`qa`: answer selection on InsuranceQA V2 with shared-weight CNN towers (Feng et al., ASRU 2015).

Data: insuranceqa.py (the published files, or a generated corpus). Model: model.py, the tower's
embedding starting, as theirs, from word2vec trained on the corpus (word2vec.py); the two
encodings are compared with cosine (the default) or GESD. What each choice measured:
docs/results/qa.md.

Training minimises the margin ranking loss over (question, ground-truth answer) pairs. The
reference samples negatives from the whole answer collection until one violates the margin (up
to a cap). Here that search is one tensor operation: each batch draws `negatives` answers, shared
by its questions, scores every question against all of them, and uses each question's first
margin violator in a random order (or its hardest negative) that is not one of its ground-truth
answers: the loss the reference's search would reach with the same draws; sharing the draws costs
one tower pass over `negatives` answers per batch instead of batch x negatives. Optionally
(`pool_negatives`) each question also draws a few negatives from its own train SOLR pool, the
kind of lexically close answers the evaluation pools hold.

Metric: top-1 accuracy over each question's candidate pool (V2 ``*.500.pool.solr.<split>``, plus
the question's ground truths; pools.py), with the IDF bag-of-words cosine baseline through the
same code beside it as ``bow_top1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gadei.task import option

from ..common import checked_options, data_dir_option, data_option, evaluating, shard, use_real_data
from . import insuranceqa, word2vec
from .insuranceqa import PAD, Split, generated_corpus
from .model import SIMILARITIES, AnswerSelector, Tower, ranking_loss
from .pools import candidates, idf_bow, pool_metrics

EMBEDDINGS = ("word2vec", "random")


@dataclass(kw_only=True, eq=False)
class QA:
    """InsuranceQA V2 answer selection with CNN towers (Feng et al. 2015).

    The module docstring has the details; each option's help line says what it sets.

    The defaults are smaller than Feng et al.'s (hidden 200, 4000 filters, answers of 200 tokens)
    so an epoch fits a shared 2-core CPU.
    """

    data: str = data_option("insuranceqa")
    data_dir: str | None = data_dir_option()
    pool: int = option(500, "candidates per question in evaluation (V2 ships 100 and 500 for valid/test)")
    question_len: int = option(30, "question tokens kept (truncation; a batch is padded to its longest)")
    answer_len: int = option(60, "answer tokens kept")
    embed_dim: int = option(100, "word vector size")
    embeddings: str = option("word2vec", '"word2vec" (the tower starts from skip-gram vectors trained '
                                         'on the answers and train questions, as Feng et al.\'s) or "random"')
    hidden: int = option(64, "units of the tower's hidden layer")
    filters: int = option(128, "convolution filters per width (the encoding has filters x widths dimensions)")
    widths: str = option("2", "convolution widths, comma-separated")
    similarity: str = option("cosine", '"cosine" or "gesd" (with gamma and c)')
    gamma: float = option(1.0, "GESD's gamma")
    c: float = option(1.0, "GESD's c")
    margin: float = option(0.2, "m of the ranking loss")
    negatives: int = option(50, "answers sampled per batch from the whole collection, shared by its questions")
    pool_negatives: int = option(0, "per question, this many more negatives from its own train SOLR pool "
                                    "(costs batch x this more answer encodings per step)")
    pick: str = option("first", 'which negative a question trains on: "first" (the first in a random '
                                'order that violates the margin, as the reference) or "hardest" (from '
                                'a random start it collapses all encodings together)')
    batch: int = option(64, "questions per batch")
    eval_questions: int = option(0, "evaluate on the first N questions of a split (0: all; a few hundred "
                                    "give a quick, noisier reading during training)")
    min_count: int = option(2, "a word must occur this often (train questions + answers) to get its own id")
    generated_seed: int = option(0, "seed of the generated corpus")

    eval_split = "valid"

    def __post_init__(self):
        self._widths = checked_options(self.widths, pool=self.pool, question_len=self.question_len,
                                       answer_len=self.answer_len, embed_dim=self.embed_dim,
                                       hidden=self.hidden, filters=self.filters, negatives=self.negatives,
                                       batch=self.batch, min_count=self.min_count)
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, not {self.similarity!r}")
        if self.embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, not {self.embeddings!r}")
        if self.pool_negatives < 0:
            raise ValueError(f"pool_negatives must be 0 or more, not {self.pool_negatives}")
        if self.pick not in ("first", "hardest"):
            raise ValueError(f"pick must be 'first' (first margin violator, as the reference) or "
                             f"'hardest' (highest-scoring negative), not {self.pick!r}")
        if not self.margin > 0:
            raise ValueError(f"margin must be positive, not {self.margin}")
        if self.eval_questions < 0:
            raise ValueError(f"eval_questions must be 0 (all) or a positive count, not {self.eval_questions}")
        if max(self._widths) > min(self.question_len, self.answer_len):
            raise ValueError(f"the widest convolution ({max(self._widths)}) must fit in question_len "
                             f"({self.question_len}) and answer_len ({self.answer_len})")

        if use_real_data(self.data, self.data_dir):
            self.corpus = insuranceqa.load(self.data_dir, pool=self.pool, min_count=self.min_count)
        else:
            self.corpus = generated_corpus(self.generated_seed)
        # padded token matrices, sliced per batch (and trimmed to the batch's longest row)
        self._answers = self.corpus.answers.padded(self.answer_len)
        self._answer_lengths = np.minimum(self.corpus.answers.lengths(), self.answer_len)
        train = self.corpus.splits["train"]
        self._train_questions = train.questions.padded(self.question_len)
        # training pairs: (question row, ground-truth answer row), one per ground truth
        self._pairs = np.array([(q, a) for q in range(len(train)) for a in train.truth.row(q)],
                               dtype=np.int64).reshape(-1, 2)
        # each train question's SOLR pool without its ground truth: negatives like the ones the
        # evaluation pools hold (lexically close to the question)
        self._pooled = []
        if self.pool_negatives:
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
        rng = np.random.default_rng([seed, learner])
        pairs = self._pairs[shard(len(self._pairs), learner, learners, rng)]
        truth = self.corpus.splits["train"].truth
        n_answers = len(self.corpus.answers)
        k, j = min(self.negatives, n_answers), self.pool_negatives
        for start in range(0, len(pairs), self.batch):
            q_rows, a_rows = pairs[start:start + self.batch].T
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
        with evaluating(model):
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
