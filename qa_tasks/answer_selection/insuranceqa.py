"""InsuranceQA V2 (Feng et al., ASRU 2015, arXiv:1508.01585): reading the published files.

The data folder (``<data dir>/insuranceqa``) holds two sub-folders (see its README):

``V2/``  (official release, github.com/shuzi/insuranceQA)
    ``vocabulary.gz``: one ``idx_N<TAB>word`` per line.
    ``InsuranceQA.question.anslabel.token.<P>.pool.solr.<split>.encoded.gz``: one question per
    line, ``domain<TAB>question<TAB>ground truth<TAB>pool``; the question is space-separated
    ``idx_N`` tokens (Stanford-tokenized), ground truth and pool are space-separated answer
    labels. Line ``i`` is question ``i`` of the split.
``pypi_insuranceqa_data_1.0/answers.json.gz``
    ``{"<label>": {"en": text, "zh": text}}``: the answer texts. The V2 answer file
    (``InsuranceQA.label2answer.*``) is missing from this copy; the README checked that these
    labels are the V2 labels, so this is the documented way to get the answers' words.
``pypi_insuranceqa_data_1.0/train.json.gz`` (optional)
    ``{"<index>": {"answers": [...], "negatives": [200 labels], ...}}``: per train question the
    first 200 answers of its V2 500-candidate SOLR pool without the ground truth (the train
    500-pool file itself is not in this copy). When present these are the train pool, the hard
    negatives training draws from (qa.py); otherwise the train pool is the V2 100-pool's.

Both sides go through one tokenizer (:func:`tokenize`: lower case, words and punctuation
split apart), so a question word and the same answer word get the same id even though the
questions come pre-tokenized and the answers raw. Ids: 0 is padding, 1 is an unknown word; the
vocabulary is every word seen ``min_count`` times in the training questions and the answer
collection (the candidate answers are the retrieval corpus, known before any question is asked;
no valid/test question text is used).

Reading the gzip/JSON files and tokenizing 27k answers takes seconds, so the result is cached
as one ``.npz`` of integer arrays under ``cache_dir("qa")`` (never beside the data), keyed by
the source files' names, sizes and mtimes; it is read back with ``allow_pickle=False``.

`generated_corpus` makes a small synthetic corpus of the same shape, for tests and demos.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qa_tasks.common import cache_dir, dataset_dir, reading, replacing

FOLDER = "insuranceqa"
V2 = "V2"
PYPI = "pypi_insuranceqa_data_1.0"
VOCABULARY = "vocabulary.gz"
ANSWERS = "answers.json.gz"
TRAIN_NEGATIVES = "train.json.gz"
PAD, UNK = 0, 1
# bump when the tokenizer or the cache layout changes: old caches are then ignored
CACHE_VERSION = 3

_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (with an inner apostrophe kept: "don't") and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def pool_file(split: str, pool: int) -> str:
    """The V2 file name of `split` with candidate pools of `pool` answers."""
    return f"InsuranceQA.question.anslabel.token.{pool}.pool.solr.{split}.encoded.gz"


class DataFormatError(ValueError):
    """A data file does not have the documented format; the message names file and line."""


@dataclass
class Ragged:
    """Rows of varying length, stored flat: row i is ``values[offsets[i]:offsets[i+1]]``."""
    values: np.ndarray   # (total,) int32
    offsets: np.ndarray  # (rows + 1,) int64

    @classmethod
    def from_rows(cls, rows) -> "Ragged":
        rows = [np.asarray(r, dtype=np.int32) for r in rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        values = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        return cls(values.astype(np.int32), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, max_len: int) -> np.ndarray:
        """(rows, max_len) int64, each row truncated to max_len and right-padded with PAD."""
        out = np.full((len(self), max_len), PAD, dtype=np.int64)
        kept = np.minimum(self.lengths(), max_len)                     # tokens kept per row
        rows = np.repeat(np.arange(len(self)), kept)
        cols = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)   # 0.. within a row
        out[rows, cols] = self.values[np.repeat(self.offsets[:-1], kept) + cols]
        return out


@dataclass
class Split:
    """One split's questions (token ids), ground-truth answer rows and candidate pool rows."""
    questions: Ragged
    truth: Ragged
    pool: Ragged

    def __len__(self) -> int:
        return len(self.questions)


@dataclass
class Corpus:
    """Everything the QA task needs, as integer arrays. Answer rows index ``answers``."""
    vocab: list[str]               # id -> word; vocab[PAD] = "<pad>", vocab[UNK] = "<unk>"
    answers: Ragged                # answer row -> token ids
    answer_labels: np.ndarray      # answer row -> the label used in the files (int64)
    splits: dict[str, Split]


# -- reading the published files ------------------------------------------------------------------

def read_vocabulary(path: Path) -> dict[str, str]:
    """``idx_N<TAB>word`` lines -> {"idx_N": word}."""
    vocab: dict[str, str] = {}
    with reading(path, "a gzip-compressed UTF-8 vocabulary"), gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not fields[0].startswith("idx_"):
                raise DataFormatError(f"{path}:{line_no}: expected 'idx_N<TAB>word', got {line[:80]!r}")
            vocab[fields[0]] = fields[1]
    return vocab


def read_answers(path: Path) -> dict[int, str]:
    """answers.json.gz ``{"<label>": {"en": text, ...}}`` -> {label: English text}."""
    with reading(path, "the PyPI insuranceqa-data answers.json.gz (gzip-compressed UTF-8 JSON)"), \
            gzip.open(path, "rt", encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise DataFormatError(f"{path}: expected a JSON object mapping labels to answers, "
                              f"got {type(raw).__name__}")
    answers: dict[int, str] = {}
    for label, entry in raw.items():
        if not label.isdigit() or not isinstance(entry, dict) or not isinstance(entry.get("en"), str):
            raise DataFormatError(f"{path}: entry {label!r} should be '<label digits>': "
                                  f"{{\"en\": text, ...}}, got {str(entry)[:80]!r}")
        answers[int(label)] = entry["en"]
    return answers


def read_train_negatives(path: Path, truths: list[list[int]]) -> list[list[int]]:
    """train.json.gz ``{"<index>": {"answers": [labels], "negatives": [labels], ...}}`` -> the
    negatives of question 0, 1, ...; its questions and ground truths must be the V2 train file's
    (`truths`, in line order), or the negatives would land on the wrong questions."""
    with reading(path, "the PyPI insuranceqa-data train.json.gz (gzip-compressed UTF-8 JSON)"), \
            gzip.open(path, "rt", encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or len(raw) != len(truths):
        raise DataFormatError(f"{path}: expected a JSON object with one entry per V2 train question "
                              f"({len(truths)}), got {len(raw) if isinstance(raw, dict) else type(raw).__name__}")
    negatives = []
    for i, truth in enumerate(truths):
        entry = raw.get(str(i))
        try:
            answers = sorted(int(x) for x in entry["answers"])
            negs = [int(x) for x in entry["negatives"]]
        except (TypeError, KeyError, ValueError) as e:
            raise DataFormatError(f"{path}: entry \"{i}\" should hold \"answers\" and \"negatives\", "
                                  f"lists of answer labels ({e!r})") from e
        if answers != sorted(truth):
            raise DataFormatError(f"{path}: entry \"{i}\" has ground truth {answers}, the V2 train "
                                  f"file's line {i + 1} has {sorted(truth)}: the two do not match")
        negatives.append(negs)
    return negatives


def read_pool_file(path: Path, vocab: dict[str, str]) -> list[tuple[list[str], list[int], list[int]]]:
    """V2 ``domain<TAB>question<TAB>ground truth<TAB>pool`` lines -> (words, truth labels, pool labels)."""
    rows = []
    with reading(path, "a gzip-compressed UTF-8 V2 pool file"), gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            where = f"{path}:{line_no}"
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 4:
                raise DataFormatError(f"{where}: expected 4 tab-separated fields "
                                      f"(domain, question, ground truth, pool), got {len(fields)}: "
                                      f"{line[:80]!r}")
            _, question, truth, pool = fields
            words = []
            for token in question.split():
                if token not in vocab:
                    raise DataFormatError(f"{where}: question token {token!r} is not in "
                                          f"{VOCABULARY} (tokens must be idx_N entries of it)")
                words.append(vocab[token])
            try:
                truth_labels = [int(x) for x in truth.split()]
                pool_labels = [int(x) for x in pool.split()]
            except ValueError as e:
                raise DataFormatError(f"{where}: ground truth and pool must be space-separated "
                                      f"answer labels (integers): {e}") from e
            if not truth_labels:
                raise DataFormatError(f"{where}: the ground-truth field is empty")
            rows.append((words, truth_labels, pool_labels))
    return rows


# -- the corpus, built once and cached --------------------------------------------------------------

def split_files(root: Path, pool: int) -> dict[str, Path]:
    """The V2 question files per split: train from its 100-pool file (100 is the train pool this
    copy holds; train.json.gz's negatives replace it when present), valid/test with `pool`
    candidates.
    Test is withheld from this copy; it is read when present."""
    v2 = root / V2
    train = v2 / pool_file("train", 100)
    if not train.exists():
        # a full release also has 500/1000/1500 train pools; any of them gives the same questions
        found = sorted(v2.glob(pool_file("train", "*")))
        train = found[0] if found else train
    files = {"train": train, "valid": v2 / pool_file("valid", pool)}
    test = v2 / pool_file("test", pool)
    if test.exists():
        files["test"] = test
    for split in ("train", "valid"):
        if not files[split].exists():
            raise FileNotFoundError(f"{files[split]} is missing: the InsuranceQA folder {root} must "
                                    f"hold V2/{files[split].name} (see its README)")
    return files


def check_files(root: Path) -> None:
    """A clear error when the vocabulary or the answer texts are missing."""
    for needed in (root / V2 / VOCABULARY, root / PYPI / ANSWERS):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing: the InsuranceQA folder {root} must hold "
                                    f"{V2}/{VOCABULARY} and {PYPI}/{ANSWERS} (see its README)")


def build_corpus(root: Path, *, pool: int = 500, min_count: int = 2) -> Corpus:
    """Read the published files under `root` (the ``insuranceqa`` folder) into a Corpus."""
    check_files(root)
    idx_vocab = read_vocabulary(root / V2 / VOCABULARY)
    texts = read_answers(root / PYPI / ANSWERS)
    labels = np.array(sorted(texts), dtype=np.int64)
    row_of = {int(label): row for row, label in enumerate(labels)}
    answer_words = [tokenize(texts[int(label)]) for label in labels]

    raw_splits = {}
    for split, path in split_files(root, pool).items():
        rows = read_pool_file(path, idx_vocab)
        for line_no, (_, truth, cands) in enumerate(rows, 1):
            missing = [x for x in truth + cands if x not in row_of]
            if missing:
                raise DataFormatError(f"{path}:{line_no}: answer label {missing[0]} is not in "
                                      f"{PYPI}/{ANSWERS} (labels there run "
                                      f"{labels[0]}..{labels[-1]})")
        # the question arrives Stanford-tokenized; join and re-tokenize so it meets the answers'
        # tokenizer on equal terms
        raw_splits[split] = [(tokenize(" ".join(words)), truth, cands) for words, truth, cands in rows]
    negatives_file = root / PYPI / TRAIN_NEGATIVES
    if negatives_file.exists():
        negatives = read_train_negatives(negatives_file, [t for _, t, _ in raw_splits["train"]])
        for line, negs in enumerate(negatives):
            missing = [x for x in negs if x not in row_of]
            if missing:
                raise DataFormatError(f"{negatives_file}: entry \"{line}\": answer label {missing[0]} "
                                      f"is not in {PYPI}/{ANSWERS}")
        raw_splits["train"] = [(w, t, negs) for (w, t, _), negs in zip(raw_splits["train"], negatives)]

    counts = Counter(w for words, _, _ in raw_splits["train"] for w in words)
    for words in answer_words:
        counts.update(words)
    vocab = ["<pad>", "<unk>"] + sorted(w for w, n in counts.items() if n >= min_count)
    word_id = {w: i for i, w in enumerate(vocab)}

    def ids(words):
        return [word_id.get(w, UNK) for w in words]

    splits = {
        split: Split(questions=Ragged.from_rows([ids(w) for w, _, _ in rows]),
                     truth=Ragged.from_rows([[row_of[x] for x in t] for _, t, _ in rows]),
                     pool=Ragged.from_rows([[row_of[x] for x in c] for _, _, c in rows]))
        for split, rows in raw_splits.items()}
    return Corpus(vocab=vocab, answers=Ragged.from_rows([ids(w) for w in answer_words]),
                  answer_labels=labels, splits=splits)


def _cache_key(root: Path, pool: int, min_count: int) -> str:
    """A digest of what the corpus depends on: source files (name, size, mtime) and options."""
    files = [root / V2 / VOCABULARY, root / PYPI / ANSWERS, *split_files(root, pool).values()]
    if (root / PYPI / TRAIN_NEGATIVES).exists():
        files.append(root / PYPI / TRAIN_NEGATIVES)
    parts = [CACHE_VERSION, pool, min_count, str(root.resolve())]
    for f in files:
        st = f.stat()
        parts.append([f.name, st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _save(corpus: Corpus, path: Path) -> None:
    arrays = {"vocab": np.array(corpus.vocab, dtype=np.str_),
              "answers_values": corpus.answers.values, "answers_offsets": corpus.answers.offsets,
              "answer_labels": corpus.answer_labels}
    for name, split in corpus.splits.items():
        for field in ("questions", "truth", "pool"):
            ragged = getattr(split, field)
            arrays[f"{name}.{field}.values"] = ragged.values
            arrays[f"{name}.{field}.offsets"] = ragged.offsets
    with replacing(path) as tmp:   # learners building the cache at once never read half a file
        np.savez(tmp, **arrays)


def _load(path: Path) -> Corpus:
    with np.load(path, allow_pickle=False) as z:
        names = {k.split(".")[0] for k in z.files if "." in k}
        splits = {name: Split(*(Ragged(z[f"{name}.{f}.values"], z[f"{name}.{f}.offsets"])
                                for f in ("questions", "truth", "pool"))) for name in sorted(names)}
        return Corpus(vocab=[str(w) for w in z["vocab"]],
                      answers=Ragged(z["answers_values"], z["answers_offsets"]),
                      answer_labels=z["answer_labels"], splits=splits)


def load(data_dir=None, *, pool: int = 500, min_count: int = 2) -> Corpus:
    """The InsuranceQA corpus under `data_dir` (or $GADEI_DATA), from the cache when it is current."""
    root = dataset_dir(data_dir, FOLDER)
    check_files(root)
    path = cache_dir("qa") / f"insuranceqa-{_cache_key(root, pool, min_count)}.npz"
    if path.exists():
        return _load(path)
    corpus = build_corpus(root, pool=pool, min_count=min_count)
    _save(corpus, path)
    return corpus


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
