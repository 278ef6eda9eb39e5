"""gadei: a shared-memory parameter server with exactly-once, deadlock-free updates.

    import gadei
    summary = gadei.train("qc", optimizer="adam", learners=2, steps=2000, out="runs/qc", lr=1e-3)

docs/architecture.md shows the layers; `import gadei` loads no workload.
"""
from gadei import checkpoint  # noqa: F401
from gadei.evaluate import load_model  # noqa: F401
from gadei.job import JobError  # noqa: F401
from gadei.train import train  # noqa: F401

__version__ = "0.1.0"
