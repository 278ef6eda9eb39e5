"""Benchmarks: each script prints a table, writes JSON, and runs its baselines in the same run."""


def train(*args, **kwargs) -> dict:
    """`gadei.train`, except that an interrupted job (Ctrl-C, SIGTERM) stops the benchmark:
    gadei.train returns the partial summary of an interrupted job, which a sweep would
    otherwise record as a result and go on to its next job."""
    import gadei
    summary = gadei.train(*args, **kwargs)
    if summary.get("interrupted"):
        raise KeyboardInterrupt(f"job {summary.get('job')} was interrupted")
    return summary
