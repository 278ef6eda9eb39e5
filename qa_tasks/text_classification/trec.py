"""TREC question classification data: Li & Roth, "Learning Question Classifiers", COLING 2002.

The files `trec/train_5500.label` and `trec/TREC_10.label` under the data directory, one
"COARSE:fine question" a line; and a generated variant that needs no files: questions built from
templates in which a class-specific question phrase ("how many", "where is") sits among shared
filler words, deterministic, learnable in a few epochs.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
TRAIN_FILE, TEST_FILE = "train_5500.label", "TREC_10.label"
# "COARSE:fine question": the coarse label in capitals, a fine label without spaces, one space,
# then a non-empty question.
LINE_RE = re.compile(r"([A-Z]+):(\S+) (.*\S.*)")


def decode_line(raw: bytes) -> str:
    """One line of a TREC file as text.

    The official files are ASCII except one byte, 0xF0, in train_5500.label ("sister\\xf0city"),
    which is not valid UTF-8. Strict UTF-8 is tried first (so a re-encoded UTF-8 copy reads
    right); a line that is not UTF-8 is read as latin-1, which maps every byte to one character
    and never fails. 0xF0 thus becomes "ð", which the tokenizer keeps as a token of its own.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_trec(path: str | Path) -> list[tuple[str, str, str]]:
    """(coarse, fine, question) for each line of a TREC `.label` file.

    A malformed line raises ValueError naming the file, the line number, what was expected and
    what was found. Blank lines (a trailing newline) are skipped.
    """
    path = Path(path)
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = decode_line(raw).rstrip("\r\n")
            if not line.strip():
                continue
            m = LINE_RE.fullmatch(line)
            if m is None:
                raise ValueError(f"{path}:{number}: expected 'COARSE:fine question' such as "
                                 f"'DESC:manner How did serfdom develop ?', got {line[:80]!r}")
            coarse, fine, question = m.groups()
            if coarse not in COARSE:
                raise ValueError(f"{path}:{number}: unknown coarse label {coarse!r}; TREC has "
                                 f"{', '.join(COARSE)}")
            rows.append((coarse, f"{coarse}:{fine}", question))
    if not rows:
        raise ValueError(f"{path}: no questions in the file; expected lines 'COARSE:fine question'")
    return rows


# Generated variant: per fine label, question phrases that mark it. Filler words are shared by
# every class, so only the phrase carries the label.
GENERATED = {
    "ABBR:abb": ["what is the abbreviation for", "what is the acronym of"],
    "ABBR:exp": ["what does the acronym stand for", "what does the letters mean"],
    "DESC:def": ["what is the definition of", "define the meaning of"],
    "DESC:reason": ["why did", "why does"],
    "ENTY:animal": ["what animal", "which creature"],
    "ENTY:color": ["what color is", "which colour"],
    "HUM:ind": ["who was", "who invented"],
    "HUM:gr": ["which company", "what team"],
    "LOC:city": ["which city", "in what town"],
    "LOC:country": ["which country", "what nation"],
    "NUM:count": ["how many", "what number of"],
    "NUM:date": ["when did", "in what year"],
}
FILLER = ("the river old famous first large small king music water paper war film star "
          "island bridge game book red north school ship gold street song machine").split()


def generated_questions(n: int, seed: int) -> list[tuple[str, str, str]]:
    """`n` (coarse, fine, question) rows: a class phrase and 2-6 filler words, deterministic."""
    rng = np.random.default_rng(seed)
    fine_labels = list(GENERATED)
    rows = []
    for i in range(n):
        fine = fine_labels[i % len(fine_labels)]
        phrase = GENERATED[fine][rng.integers(len(GENERATED[fine]))]
        words = list(rng.choice(FILLER, size=rng.integers(2, 7)))
        cut = rng.integers(len(words) + 1)
        # the phrase usually opens the question, as in TREC, but not always
        text = " ".join(words[:cut] + [phrase] + words[cut:]) if rng.random() < 0.2 else \
            " ".join([phrase] + words)
        rows.append((fine.split(":")[0], fine, text + " ?"))
    return rows
