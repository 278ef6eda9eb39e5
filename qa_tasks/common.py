"""What every workload needs: where data and caches live, and how a data choice is resolved."""
from __future__ import annotations

import os
from pathlib import Path


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


def cache_dir(*parts: str) -> Path:
    """A writable cache folder under the user's cache directory (never beside the data)."""
    base = os.environ.get("GADEI_CACHE") or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    path = Path(base).expanduser() / "gadei" / Path(*parts) if parts else Path(base).expanduser() / "gadei"
    path.mkdir(parents=True, exist_ok=True)
    return path
