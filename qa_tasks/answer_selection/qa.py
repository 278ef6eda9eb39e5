"""`qa`: answer selection on InsuranceQA V2 with shared-weight CNN towers (Feng et al., ASRU 2015)
and a kernel-pooling match of the two texts' words (K-NRM, Xiong et al., SIGIR 2017).

Data: insuranceqa.py (the published files, or a generated corpus). Model: model.py, the tower's
embedding starting, as theirs, from word2vec trained on the corpus (word2vec.py); the two
encodings are compared with cosine (the default) or GESD. What each choice measured:
docs/results/qa.md.

Training pairs each train question with each of its ground-truth answers. Every batch draws
`negatives` answers from the whole collection, shared by its questions, and `pool_negatives` more
per question from that question's own train SOLR pool (insuranceqa.py: the top of its V2
500-candidate pool without the ground truth): the lexically close answers the evaluation pools
are made of. Two objectives (`objective`):

- ``softmax`` (the default; InfoNCE, as in dense retrieval): each question's cross-entropy over
  every answer the batch encodes (its ground truth, the other questions' ground truths, the
  shared random answers and every question's pool negatives), on cosine / `temperature`; an
  answer that is one of the question's own ground truths is left out of its candidates. Every
  encoded answer serves every question, so a batch of 64 questions with 4 pool negatives each
  (the defaults) trains each question against 319 answers, 256 of them hard.
- ``margin``: Feng et al.'s max(0, m - s(q, a+) + s(q, a-)). The reference samples negatives until
  one violates the margin (up to a cap); here that search is one tensor operation over the
  question's `negatives` + `pool_negatives` candidates in a random order, and the question trains
  on its first violator (or its hardest negative): the loss the reference's search would reach
  with the same draws.

With `train_lexical` (an option, off by default: it did not gain, docs/results/qa.md) the softmax's
logits are (similarity + `bow_weight` x the lexical score) / `temperature`, the lexical score of
each (question, encoded answer) pair being the evaluation's own (`lexical`, the same sparse rows):
the towers are trained inside the sum they are ranked by, on what the lexical score leaves
unexplained.

With `interaction` "knrm" (an option: it did not beat the towers alone, docs/results/qa.md) the
score of a (question, answer) pair is the towers' cosine plus a kernel match (model.py's
`KernelMatch`, K-NRM with question-word gates: the word x word cosines of the two texts, which the
towers never compare), and a second cross-entropy trains that sum: each question's ground truth
against its own `pool_negatives`, the candidates an evaluation pool is made of. The towers keep
their softmax over the whole batch; the match, costing a (question words x answer words x
kernels) array per pair, sees only the question's own candidates (about 20 % more per step than
the towers alone; at evaluation every pool candidate).

Metric: top-1 accuracy over each question's candidate pool (V2 ``*.500.pool.solr.<split>``, plus
the question's ground truths; pools.py; also over the pools as released and over the questions
whose pool holds a truth), with two lexical baselines through the same code beside it: the IDF
bag-of-words cosine (``bow_top1``), BM25 (``bm25_top1``) and the translation language model
(``translation_top1``). An answer's score is the model's similarity plus `bow_weight` times a
lexical score (`lexical`: BM25 by default, or the IDF cosine) plus `translation_weight` times the
translation language model's (translation.py: IBM Model 1 fitted on the train pairs, so that an
answer saying the question's words in related words scores too): the pools were retrieved by word
overlap, and the two word-level scores add what the towers miss (docs/results/qa.md, valid: the
towers alone 0.1915, + the IDF cosine 0.210, + BM25 0.238, + BM25 and the translation model 0.2835).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from gadei.task import option

from ..common import checked_options, data_dir_option, data_option, evaluating, shard, use_real_data
from . import insuranceqa, word2vec
from .insuranceqa import PAD, Split, generated_corpus
from .model import SIMILARITIES, AnswerSelector, KernelMatch, Tower, ranking_loss, softmax_loss
from .pools import bm25, candidates, idf_bow, pool_metrics
from .translation import TranslationLM, fit_ibm1

EMBEDDINGS = ("word2vec", "random")
OBJECTIVES = ("softmax", "margin")
INTERACTIONS = ("knrm", "none")
LEXICAL = {"bm25": "bm25", "idf": "bow"}     # option value -> its part in `pool_scores`
LEXICAL_PARTS = ("bow", "bm25", "translation")   # the word-level scores `pool_scores` gives


class Batch(NamedTuple):
    """One training batch: token matrices and the masks both losses need."""
    questions: torch.Tensor    # (B, Lq)
    positives: torch.Tensor    # (B, La): each question's ground-truth answer of this pair
    shared: torch.Tensor       # (K, La): random answers, shared by the batch
    pooled: torch.Tensor       # (B * j, La): question b's own-pool negatives are rows b*j .. b*j+j-1
    margin_ok: torch.Tensor    # (B, K + j) bool: shared, then own pooled, usable as negatives
    order: torch.Tensor        # (B, K + j): each question's search order over them (margin loss)
    softmax_ok: torch.Tensor   # (B, B + K + B*j) bool: positives, shared, pooled; False where the
                               # answer is one of the question's ground truths (its own column is True)
    lexical: torch.Tensor      # (B, B + K + B*j) float32: the lexical score of each (question, encoded
                               # answer) pair with train_lexical, else (B, 0)


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
    answer_len: int = option(80, "answer tokens kept")
    embed_dim: int = option(100, "word vector size")
    embeddings: str = option("word2vec", '"word2vec" (the tower starts from skip-gram vectors trained '
                                         'on the answers and train questions, as Feng et al.\'s) or "random"')
    hidden: int = option(64, "units of the tower's hidden layer")
    filters: int = option(256, "convolution filters per width (the encoding has filters x widths dimensions)")
    widths: str = option("2", "convolution widths, comma-separated")
    similarity: str = option("cosine", '"cosine" or "gesd" (with gamma and c)')
    gamma: float = option(1.0, "GESD's gamma")
    c: float = option(1.0, "GESD's c")
    objective: str = option("softmax", '"softmax" (cross-entropy over every answer the batch encodes) or '
                                  '"margin" (Feng et al.\'s ranking loss on one negative per question)')
    temperature: float = option(0.05, "softmax loss: the cosine scores are divided by this")
    margin: float = option(0.2, "margin loss: its m")
    negatives: int = option(0, "answers sampled per batch from the whole collection, shared by its questions")
    pool_negatives: int = option(4, "per question, this many more negatives from its own train SOLR pool "
                                    "(costs batch x this more answer encodings per step)")
    pick: str = option("first", 'which negative a question trains on: "first" (the first in a random '
                                'order that violates the margin, as the reference) or "hardest" (from '
                                'a random start it collapses all encodings together)')
    interaction: str = option("none", '"none" (the towers alone) or "knrm" (add a kernel-pooling score '
                                      'over the question x answer word cosines, trained on each question\'s '
                                      'own pool negatives; measured below the towers alone on valid, '
                                      'docs/results/qa.md)')
    kernels: int = option(11, "knrm: RBF kernels (an exact-match one and kernels-1 soft ones over -1..1)")
    match_vectors: str = option("trained", 'knrm: its word vectors "trained" (from the word2vec start) or '
                                           '"fixed" (the word2vec vectors as they are)')
    batch: int = option(64, "questions per batch")
    bow_weight: float = option(0.5, "evaluation: score = the model's similarity + this x the lexical "
                                     "score `lexical` (the word overlap the SOLR pools were ranked by; "
                                     "0: the model alone)")
    lexical: str = option("bm25", '"bm25" (BM25 over the answer collection, divided by the most the '
                                  'question can score: in [0, 1)) or "idf" (the IDF bag-of-words cosine, '
                                  'the score before BM25: best with bow_weight 0.5)')
    bm25_k1: float = option(1.2, "BM25's k1 (term-frequency saturation)")
    bm25_b: float = option(0.3, "BM25's b (answer-length normalisation, 0..1)")
    translation_weight: float = option(0.5, "evaluation: + this x the translation language model's score "
                                            "(IBM Model 1 fitted on the train pairs: how likely the answer, "
                                            "in its own or related words, is to generate the question's "
                                            "words; translation.py; 0: off)")
    translation_mix: float = option(0.3, "translation model: the weight of related words against exact "
                                         "matches (its beta, 0..1)")
    translation_smoothing: float = option(0.05, "translation model: the weight of the collection's word "
                                                "frequencies (its lambda, in (0, 1])")
    translation_iterations: int = option(10, "translation model: EM iterations fitting IBM Model 1")
    train_lexical: bool = option(False, "softmax objective: train on (similarity + bow_weight x the lexical "
                                        "score) / temperature, the score the evaluation ranks by, so the "
                                        "towers learn what the lexical score misses")
    eval_questions: int = option(0, "evaluate on the first N questions of a split (0: all; a few hundred "
                                    "give a quick, noisier reading during training)")
    min_count: int = option(2, "a word must occur this often (train questions + answers) to get its own id")
    generated_seed: int = option(0, "seed of the generated corpus")

    eval_split = "valid"
    # the job settings of `gadei train --task qa` (the recipe contract: JobConfig fields and the
    # optimizer's hyper-parameters; explicit options override them). Measured in docs/results/qa.md.
    recipe: ClassVar[dict] = {"optimizer": "adam", "lr": 2e-3, "lr_schedule": "cosine", "steps": 4000}

    def __post_init__(self):
        self._widths = checked_options(self.widths, pool=self.pool, question_len=self.question_len,
                                       answer_len=self.answer_len, embed_dim=self.embed_dim,
                                       hidden=self.hidden, filters=self.filters,
                                       batch=self.batch, min_count=self.min_count)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, not {self.similarity!r}")
        if self.embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be one of {', '.join(EMBEDDINGS)}, not {self.embeddings!r}")
        if self.negatives < 0 or self.pool_negatives < 0:
            raise ValueError(f"negatives and pool_negatives must be 0 or more, not {self.negatives} "
                             f"and {self.pool_negatives}")
        if self.objective == "margin" and self.negatives + self.pool_negatives == 0:
            raise ValueError("the margin objective needs negatives: negatives + pool_negatives must be >= 1")
        if self.pick not in ("first", "hardest"):
            raise ValueError(f"pick must be 'first' (first margin violator, as the reference) or "
                             f"'hardest' (highest-scoring negative), not {self.pick!r}")
        if not self.margin > 0:
            raise ValueError(f"margin must be positive, not {self.margin}")
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {', '.join(INTERACTIONS)}, not {self.interaction!r}")
        if self.interaction == "knrm" and (self.objective != "softmax" or self.pool_negatives == 0):
            raise ValueError("interaction 'knrm' trains with the softmax objective on each question's own "
                             "pool negatives (pool_negatives >= 1); use interaction 'none' otherwise")
        if self.match_vectors not in ("trained", "fixed"):
            raise ValueError(f"match_vectors must be 'trained' or 'fixed', not {self.match_vectors!r}")
        if self.interaction == "knrm" and self.kernels < 2:
            raise ValueError(f"kernels must be at least 2 (exact match and one soft kernel), "
                             f"not {self.kernels}")
        if self.lexical not in LEXICAL:
            raise ValueError(f"lexical must be one of {', '.join(LEXICAL)}, not {self.lexical!r}")
        if not self.bm25_k1 > 0 or not 0 <= self.bm25_b <= 1:
            raise ValueError(f"bm25_k1 must be positive and bm25_b in [0, 1], not {self.bm25_k1} "
                             f"and {self.bm25_b}")
        if (self.translation_weight < 0 or self.translation_iterations < 1
                or not 0 < self.translation_smoothing <= 1 or not 0 <= self.translation_mix <= 1):
            raise ValueError(f"the translation model needs translation_weight >= 0, translation_iterations "
                             f">= 1, translation_smoothing in (0, 1] and translation_mix in [0, 1], not "
                             f"{self.translation_weight}, {self.translation_iterations}, "
                             f"{self.translation_smoothing} and {self.translation_mix}")
        if self.train_lexical and self.objective != "softmax":
            raise ValueError("train_lexical adds the lexical score to the softmax objective's logits; "
                             "it needs objective 'softmax'")
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
        self._pooled: list[np.ndarray] = []
        if self.pool_negatives:
            for q in range(len(train)):
                truth = set(train.truth.row(q).tolist())
                self._pooled.append(np.array([a for a in train.pool.row(q).tolist() if a not in truth],
                                             dtype=np.int64))
        # per (split, questions): the word-level parts of the score (they do not depend on the
        # model) and the baselines' metrics over them, each computed once
        self._lexical: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self._bow: dict[tuple[str, int], dict[str, float]] = {}
        self._translation: TranslationLM | None = None       # fitted when first needed
        # train_lexical: the train questions' and the answers' lexical rows (the evaluation's own)
        self._train_lexical = self._lexical_vectors("train") if self.train_lexical else None

    # -- the task interface --

    def build_model(self) -> nn.Module:
        tower = Tower(len(self.corpus.vocab), self.embed_dim, self.hidden, self.filters, self._widths)
        vectors = torch.from_numpy(self.word_vectors()) if self.embeddings == "word2vec" else None
        match = None
        if self.interaction == "knrm":
            match = KernelMatch(len(self.corpus.vocab), self.embed_dim, self.kernels,
                                fixed=vectors if self.match_vectors == "fixed" else None)
        if vectors is not None:
            with torch.no_grad():
                for embed in [tower.embed] + ([match.embed] if match and match.embed else []):
                    embed.weight.copy_(vectors)
        return AnswerSelector(tower, self.similarity, self.gamma, self.c, match)

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
        """One epoch of this learner's pairs as `Batch`es.

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
            b = len(q_rows)
            neg_rows = rng.choice(n_answers, k, replace=False)
            own = self.pool_sample(q_rows, rng)                                   # (B * j,)
            # every answer the batch encodes, and which of them each question may treat as negative
            encoded = np.concatenate([a_rows, neg_rows, own])
            ok = np.stack([~np.isin(encoded, truth.row(q)) for q in q_rows])     # (B, B + K + B*j)
            ok[np.arange(b), np.arange(b)] = True                                # its own positive
            own_cols = b + k + (np.arange(b)[:, None] * j + np.arange(j)[None, :])   # (B, j)
            margin_ok = np.concatenate([ok[:, b:b + k], np.take_along_axis(ok, own_cols, axis=1)], axis=1)
            # margin loss: each question searches its K + j candidates in its own random order
            order = rng.permuted(np.tile(np.arange(k + j), (b, 1)), axis=1)       # (B, K + j)
            yield Batch(self._trim(self._train_questions[q_rows]), self._trim(self._answers[a_rows]),
                        self._trim(self._answers[neg_rows]), self._trim(self._answers[own]),
                        torch.from_numpy(margin_ok), torch.from_numpy(order), torch.from_numpy(ok),
                        self.batch_lexical(q_rows, encoded))

    def batch_lexical(self, q_rows: np.ndarray, a_rows: np.ndarray) -> torch.Tensor:
        """The lexical score (`lexical`, as the evaluation computes it) of every train question of
        `q_rows` with every answer of `a_rows`: (len(q_rows), len(a_rows)) float32, or
        (len(q_rows), 0) without train_lexical. One sparse product of the batch's rows."""
        if self._train_lexical is None:
            return torch.zeros(len(q_rows), 0)
        q_vecs, a_vecs = self._train_lexical
        return torch.from_numpy((q_vecs[q_rows] @ a_vecs[a_rows].T).toarray().astype(np.float32))

    def pool_sample(self, q_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`pool_negatives` answers per question from its own train pool without its ground truth,
        without replacement when the pool is large enough (a question whose pool is empty gets
        random answers), concatenated question by question: (len(q_rows) * pool_negatives,)."""
        j = self.pool_negatives
        if j == 0:
            return np.zeros(0, dtype=np.int64)
        out = []
        for q in q_rows:
            pool = self._pooled[q]
            if len(pool) == 0:
                out.append(rng.choice(len(self.corpus.answers), j))
            else:
                out.append(rng.choice(pool, j, replace=len(pool) < j))
        return np.concatenate(out).astype(np.int64)

    def batch_size(self, batch) -> int:
        return len(batch[0])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        b, j = len(batch.questions), self.pool_negatives
        q = model.tower(batch.questions)                                  # (B, D)
        pos_vecs = model.tower(batch.positives)                           # (B, D)
        shared = model.tower(batch.shared)                                # (K, D)
        own = model.tower(batch.pooled) if j else shared[:0]              # (B * j, D)
        if self.objective == "softmax":
            answers = torch.cat([pos_vecs, shared, own])                  # (B + K + B*j, D)
            scores = model.score(q[:, None, :], answers[None, :, :])      # (B, B + K + B*j)
            if self.train_lexical:    # the evaluation's score: the towers learn the lexical residual
                scores = scores + self.bow_weight * batch.lexical
            loss = softmax_loss(scores / self.temperature, batch.softmax_ok)
            if model.match is not None:
                loss = loss + self.joint_loss(model, batch, scores)
            return loss
        pos = model.score(q, pos_vecs)                                    # (B,)
        neg = model.score(q[:, None, :], shared[None, :, :])              # (B, K)
        if j:
            neg = torch.cat([neg, model.score(q[:, None, :], own.view(b, j, -1))], dim=1)   # (B, K + j)
        return ranking_loss(pos, neg, batch.margin_ok, self.margin,
                            batch.order if self.pick == "first" else None)

    def joint_loss(self, model: nn.Module, batch: Batch, scores: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each question's ground truth among itself and its own pool negatives
        (the kind of candidates a pool holds), scored by the towers plus the kernel match.
        scores: the towers' (B, B + K + B*j) from `loss`."""
        b, j = len(batch.questions), self.pool_negatives
        k = batch.shared.shape[0]
        own_cols = b + k + torch.arange(b)[:, None] * j + torch.arange(j)[None, :]      # (B, j)
        cols = torch.cat([torch.arange(b)[:, None], own_cols], dim=1)                  # (B, 1 + j)
        width = max(batch.positives.shape[1], batch.pooled.shape[1])

        def padded(tokens):     # the two answer matrices were trimmed apart: one width for both
            return nn.functional.pad(tokens, (0, width - tokens.shape[1]), value=PAD)
        answers = torch.cat([padded(batch.positives)[:, None], padded(batch.pooled).view(b, j, width)],
                            dim=1).view(b * (1 + j), width)                             # (B (1 + j), La)
        questions = batch.questions.repeat_interleave(1 + j, dim=0)                     # (B (1 + j), Lq)
        match = model.match(questions, answers).view(b, 1 + j)
        joint = (scores.gather(1, cols) + match) / self.temperature
        ok = batch.softmax_ok.gather(1, cols)
        return nn.functional.cross_entropy(joint.masked_fill(~ok, -math.inf),
                                           torch.zeros(b, dtype=torch.long))

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
        """top-1 over the pools of `split` (first `eval_questions`), model and lexical baselines."""
        data, n = self._split(split)
        parts = self.pool_scores(model, split)
        total = parts["towers"] + parts.get("match", 0.0)
        if self.bow_weight:
            total = total + self.bow_weight * parts[LEXICAL[self.lexical]]
        if self.translation_weight:
            total = total + self.translation_weight * parts["translation"]
        metrics = pool_metrics(lambda q_rows, cand_rows: total[q_rows], data, n)
        metrics.update(self.bow_metrics(split))
        metrics["questions"] = float(n)
        return metrics

    def pool_scores(self, model: nn.Module, split: str, chunk: int = 64) -> dict[str, np.ndarray]:
        """The parts of the score of each candidate of `split`'s first `eval_questions` pools,
        (n, P) arrays in `pools.candidates` order: "towers" (their similarity), "match" (the
        kernel match, with interaction knrm), "bow" (the IDF bag-of-words cosine), "bm25"
        (normalised BM25) and "translation" (the translation language model)."""
        data, n = self._split(split)
        cands, _, _ = candidates(data, n)
        with evaluating(model), torch.no_grad():
            # encode each answer the pools hold once, then score pools by lookup
            needed = np.unique(cands[cands >= 0])
            answer_vecs = torch.zeros(len(self.corpus.answers), model.tower.dim)
            answer_vecs[torch.from_numpy(needed)] = self._encode(model, self._answers[needed],
                                                                 self._answer_lengths[needed])
            q_tokens = data.questions.padded(self.question_len)[:n]
            q_vecs = self._encode(model, q_tokens, (q_tokens != PAD).sum(1))
            towers = np.zeros(cands.shape, dtype=np.float32)
            for s in range(0, n, chunk):    # in chunks: all n x P encodings at once are GBs
                a = answer_vecs[torch.from_numpy(np.maximum(cands[s:s + chunk], 0))]    # (c, P, D)
                towers[s:s + chunk] = model.score(q_vecs[s:s + chunk, None, :], a).numpy()
            parts = {"towers": towers}
            if model.match is not None:
                parts["match"] = self._match_scores(model.match, q_tokens, cands)
        return {**parts, **self._lexical_parts(split, chunk)}

    def _lexical_parts(self, split: str, chunk: int = 64) -> dict[str, np.ndarray]:
        """`pool_scores`' word-level parts ("bow", "bm25", "translation") of `split`'s first
        `eval_questions` pools; they do not depend on the model, so they are scored once."""
        data, n = self._split(split)
        if (split, n) not in self._lexical:
            cands, _, _ = candidates(data, n)
            parts = {}
            for part in LEXICAL_PARTS:
                score = self._lexical_scorer(split, part)
                parts[part] = np.concatenate([score(np.arange(s, min(s + chunk, n)), cands[s:s + chunk])
                                              for s in range(0, n, chunk)])
            self._lexical[(split, n)] = parts
        return self._lexical[(split, n)]

    def _match_scores(self, match: KernelMatch, q_tokens: np.ndarray, cand_rows: np.ndarray) -> np.ndarray:
        """The kernel match of each question (n, Lq) with its candidates (n, P) -> (n, P)."""
        vocab = match.words(torch.arange(len(self.corpus.vocab)))
        out = np.zeros(cand_rows.shape, dtype=np.float32)
        for i, (q, rows) in enumerate(zip(q_tokens, cand_rows)):
            out[i] = match.pool(self._trim(q[None])[0], self._trim(self._answers[np.maximum(rows, 0)]),
                                vocab).numpy()
        return out

    def bow_metrics(self, split: str) -> dict[str, float]:
        """The lexical baselines through the same pool code (cached per split): the IDF
        bag-of-words cosine as bow_top1..., BM25 as bm25_top1..., the translation language model
        as translation_top1..."""
        data, n = self._split(split)
        if (split, n) not in self._bow:
            self._bow[(split, n)] = {}
            for part, score in self._lexical_parts(split).items():
                m = pool_metrics(lambda q_rows, cand_rows: score[q_rows], data, n)
                self._bow[(split, n)].update({f"{part}_top1": m["top1"],
                                              f"{part}_top1_raw_pool": m["top1_raw_pool"],
                                              f"{part}_top1_answerable": m["top1_answerable"]})
        return self._bow[(split, n)]

    def _lexical_scorer(self, split: str, part: str):
        """`(question rows, candidate rows) -> lexical scores` for `split`: part "bow" the IDF
        bag-of-words cosine, "bm25" the normalised BM25, "translation" the translation language
        model."""
        if part == "translation":
            questions, model = self.corpus.splits[split].questions, self.translation_model()
            return lambda q_rows, cand_rows: np.stack([model.scores(questions.row(q), np.maximum(rows, 0))
                                                       for q, rows in zip(q_rows, cand_rows)])
        q_vecs, a_vecs = self._lexical_vectors(split, part)

        def scores(q_rows, cand_rows):
            flat = np.maximum(cand_rows, 0).ravel()
            q = q_vecs[np.repeat(q_rows, cand_rows.shape[1])]
            return np.asarray(q.multiply(a_vecs[flat]).sum(axis=1)).reshape(cand_rows.shape)
        return scores

    def translation_model(self) -> TranslationLM:
        """The translation language model of this corpus, IBM Model 1 fitted on the training
        pairs (a few seconds; once per task)."""
        if self._translation is None:
            train = self.corpus.splits["train"]
            table = fit_ibm1(train.questions, self.corpus.answers, self._pairs, len(self.corpus.vocab),
                             self.translation_iterations)
            self._translation = TranslationLM(table, self.corpus.answers, train.questions,
                                              smoothing=self.translation_smoothing, mix=self.translation_mix)
        return self._translation

    def _lexical_vectors(self, split: str, part: str | None = None):
        """(question rows of `split`, answer rows): sparse matrices whose row products are the
        lexical score `part` ("bow" or "bm25"; default: the `lexical` option's)."""
        part = LEXICAL[self.lexical] if part is None else part
        questions = self.corpus.splits[split].questions
        if part == "bow":
            return idf_bow(self.corpus, questions)
        return bm25(self.corpus, questions, k1=self.bm25_k1, b=self.bm25_b)
