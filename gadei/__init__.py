"""gadei: a shared-memory parameter server with exactly-once, deadlock-free updates.

    import gadei
    summary = gadei.train("qc", optimizer="adam", learners=2, steps=2000, out="runs/qc", lr=1e-3)
"""
from gadei.train import JobError, load_model, train  # noqa: F401
from gadei import checkpoint  # noqa: F401

__version__ = "0.1.0"
