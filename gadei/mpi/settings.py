"""The MPI backend's knobs: explicit option, then GADEI_* variable, then default (docs/mpi.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from gadei.job import JobConfig


@dataclass
class Settings:
    """The MPI backend's knobs: explicit option, then GADEI_* variable, then default."""
    sync_every: int = 20        # node updates between exchanges with the global PS
    cross_node: str = "downpour"
    easgd_beta: float = 0.9     # EASGD: alpha = beta / nodes
    timeout: float = 60.0       # seconds any cross-node wait may take
    ranks_per_node: int = 0     # 0: the real nodes (COMM_TYPE_SHARED)

    @classmethod
    def resolve(cls, cfg: JobConfig) -> "Settings":
        env = os.environ
        try:
            s = cls(sync_every=cfg.sync_every or int(env.get("GADEI_SYNC_EVERY", 20)),
                    cross_node=cfg.cross_node or env.get("GADEI_CROSS_NODE", "downpour"),
                    easgd_beta=float(env.get("GADEI_EASGD_BETA", 0.9)),
                    timeout=float(env.get("GADEI_MPI_TIMEOUT", 60)),
                    ranks_per_node=int(env.get("GADEI_RANKS_PER_NODE", 0) or 0))
        except ValueError as e:
            raise ValueError(f"bad GADEI_* setting for the MPI backend: {e}") from None
        if s.sync_every < 1:
            raise ValueError(f"--sync-every must be at least 1, not {s.sync_every}")
        if s.cross_node not in ("downpour", "easgd"):
            raise ValueError(f"--cross-node must be 'downpour' or 'easgd', not {s.cross_node!r}")
        if not 0 < s.easgd_beta <= 1:
            raise ValueError(f"GADEI_EASGD_BETA must be in (0, 1], not {s.easgd_beta}")
        if s.timeout <= 0 or s.ranks_per_node < 0:
            raise ValueError(f"bad GADEI_MPI_TIMEOUT {s.timeout} or GADEI_RANKS_PER_NODE {s.ranks_per_node}")
        return s
