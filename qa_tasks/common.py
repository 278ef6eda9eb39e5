"""What every workload needs: where data and caches live, and how a data choice is resolved."""
from __future__ import annotations

import json
import os
import tarfile
import wave
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from gadei.task import option

# What a damaged, truncated or wrongly encoded file raises from deep inside gzip, zlib, tarfile,
# wave, json or a codec (wave's seek past a lying chunk size is a bare RuntimeError; a nesting
# bomb is a RecursionError); `reading` turns each into a ValueError that names the file.
_DAMAGE = (UnicodeDecodeError, json.JSONDecodeError, EOFError, zlib.error, tarfile.TarError, wave.Error,
           RecursionError, RuntimeError)


def data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory: the explicit argument, else $GADEI_DATA, else None."""
    chosen = data_dir or os.environ.get("GADEI_DATA")
    return Path(chosen).expanduser() if chosen else None


def dataset_dir(data_dir, folder: str) -> Path:
    """`<data root>/<folder>`, or a clear error saying how to point at it."""
    root = data_root(data_dir)
    if root is None:
        raise FileNotFoundError(f"no data directory: pass --data-dir or set GADEI_DATA to the folder "
                                f"that holds {folder}/ (or use --data generated)")
    path = root / folder
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory: the data directory {root} must hold "
                                f"{folder}/ (or use --data generated)")
    return path


def use_real_data(data: str, data_dir) -> bool:
    """Resolve data="real" | "generated" | "auto" (real when a data directory is configured)."""
    if data not in ("real", "generated", "auto"):
        raise ValueError(f"data must be 'real', 'generated' or 'auto', not {data!r}")
    if data == "auto":
        return data_root(data_dir) is not None
    return data == "real"


def data_option(folder: str):
    """The `data` option of a task that reads `<data root>/<folder>/`."""
    return option("auto", f'"real" ({folder}/ under data_dir or $GADEI_DATA), "generated" (small, '
                          'built in, no files) or "auto" (real when a data directory is configured)')


def data_dir_option():
    """The `data_dir` option: where the datasets are."""
    return option(None, "the folder holding the datasets (default: $GADEI_DATA)")


def cache_dir(*parts: str) -> Path:
    """A writable cache folder under the user's cache directory (never beside the data)."""
    base = os.environ.get("GADEI_CACHE") or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    path = Path(base).expanduser() / "gadei" / Path(*parts) if parts else Path(base).expanduser() / "gadei"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def replacing(path: str | os.PathLike):
    """Write `path` whole or not at all: the block writes the temporary path this yields (private
    to the process, beside `path`, with its suffix last so numpy adds none), which then replaces
    `path` in one rename. Concurrent writers never share a file; readers never see half of one."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def evaluating(model):
    """Run the block with `model` in eval mode (dropout off); the mode it had is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def reading(path, what: str):
    """Read `path` inside this block: a file that is damaged or not `what` becomes a ValueError
    naming the file, what was wrong and what to do. A missing file stays a FileNotFoundError."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (*_DAMAGE, OSError) as e:   # OSError: gzip.BadGzipFile and the reads under it
        kind = type(e).__name__
        if type(e).__module__ != "builtins":
            kind = f"{type(e).__module__}.{kind}"
        raise ValueError(f"{path}: not {what} ({kind}: {e}); replace it with an intact copy") from e


def check_learner(learner: int, learners: int) -> None:
    """A clear error unless 0 <= learner < learners."""
    if learners < 1 or not 0 <= learner < learners:
        raise ValueError(f"learner must be in 0..{learners - 1}, not {learner} (of {learners} learners)")


def shard(n: int, learner: int, learners: int, rng: np.random.Generator) -> np.ndarray:
    """Learner `learner`'s share of `n` examples, shuffled by `rng`: the indices learner,
    learner + learners, ... (disjoint shards that cover everything, whatever the seeds)."""
    check_learner(learner, learners)
    own = np.arange(learner, n, learners)
    return own[rng.permutation(len(own))]


def checked_options(widths: str, fractions: dict[str, float] | None = None,
                    **positive: int) -> tuple[int, ...]:
    """Check the options text models share (each of `fractions`, e.g. dropouts, in [0, 1); each
    of `positive` >= 1); return the convolution widths parsed from "3,4,5"."""
    try:
        parsed = tuple(int(w) for w in str(widths).split(","))
    except ValueError:
        raise ValueError(f"widths must be comma-separated integers such as '3,4,5', not {widths!r}") from None
    for name, p in (fractions or {}).items():
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), not {p}")
    for name, value in [*positive.items(), *[("widths", w) for w in parsed]]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, not {value}")
    return parsed
