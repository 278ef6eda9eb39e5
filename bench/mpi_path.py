"""The cross-node path's throughput: one node leader's sync rounds against the global PS.

    mpiexec -n 2 python -m bench.mpi_path [--quick] [--sizes 1048576,4194304] [--rounds 10]
            [--out docs/bench/mpi_path.json]

World rank 1 plays a node leader (gadei.mpi.uplink.MPILink: a validated msgpack control message and a
raw float32 delta up, the centre back down, each wait bounded) and world rank 0 the global PS
(gadei.mpi.centre.GlobalPS.serve: probe, validate, receive, C += delta, reply), i.e. exactly the code
a multi-node job runs, minus the node arenas. Reported per model size: seconds per sync round
and the bytes/s both ways together (2 x 4 x P bytes per round, control messages excluded),
beside the floor of the same machine: a raw blocking MPI Send/Recv ping-pong of the same bytes.
On one machine MPICH moves these through shared memory, so this is an upper bound of what a
real network gives; across machines the network's bandwidth bounds it.

Across hosts (as root; bench/hosts.py makes two namespace hosts joined by TCP over veth, one
rank on each, and runs the above there once per link setting, in one run):

    python -m bench.mpi_path --hosts [--rate 1gbit,100mbit] [--delay 0.5ms] \\
            [--out docs/bench/mpi_path_hosts.json]

`--rate` shapes every host's link with tc tbf, `--delay` with tc netem (where the kernel has
them; a setting it lacks is reported and skipped). The record adds per setting the bytes eth0
of host1 carried, which shows the bytes crossed TCP and not shared memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one small size, few rounds (for tests)")
    p.add_argument("--sizes", default="262144,1048576,4194304,16777216", help="float32 values per sync")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out")
    p.add_argument("--hosts", action="store_true", help="run across two namespace hosts (bench/hosts.py)")
    p.add_argument("--rate", help="with --hosts: also with every link shaped to these rates (tc tbf), "
                   "comma-separated, e.g. 1gbit,100mbit")
    p.add_argument("--delay", help="with --hosts: also with this one-way delay on every link (tc netem)")
    args = p.parse_args()
    if args.hosts:
        return over_hosts(args)
    from mpi4py import MPI

    from gadei.arena import Layout
    from gadei.job import JobConfig
    from gadei.mpi.centre import GlobalPS
    from gadei.mpi.settings import Settings
    from gadei.mpi.topology import Topology
    from gadei.mpi.uplink import MPILink
    sizes = [262144] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 3 if args.quick else args.rounds
    world = MPI.COMM_WORLD
    if world.Get_size() != 2:
        raise SystemExit("run with: mpiexec -n 2 python -m bench.mpi_path")
    rank = world.Get_rank()
    settings = Settings(timeout=60.0)
    topo = Topology(world, None, rank, 2, 0, rank, [0, 1], [[], [0]], np.zeros((2, 4), np.int64), None)
    results = []
    for n in sizes:
        # the floor on this machine: raw blocking MPI Send/Recv of the same bytes, no gadei
        buf = np.ones(n, np.float32)
        world.Barrier()
        raw = []
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            if rank == 1:
                world.Send(buf, 0, 1)
                world.Recv(buf, 0, 2)
            else:
                world.Recv(buf, 1, 1)
                world.Send(buf, 1, 2)
            if r:
                raw.append(time.perf_counter() - t0)
        raw_t = float(np.median(raw))
        world.Barrier()
        if rank == 0:
            layout = Layout(params=(("w", (n,)),), state=(), rule="sgd", hyper=(), learners=1)
            gps = GlobalPS(topo, JobConfig(), settings, layout, np.zeros(n, np.float32), None, 0, print)
            while len(gps.final) < 1:
                gps.serve()
            while gps.sends:                 # let the last reply leave
                gps.serve()
        else:
            link = MPILink(world, n, settings.timeout)
            delta = np.ones(n, np.float32)
            stats = {"updates": 0, "rejects": 0, "stale_sum": 0, "stale_max": 0,
                     "ps_restarts": 0, "lost": 0, "version": 0}
            times = []
            for r in range(rounds + 1):
                msg = {"op": "sync", "node": 1, "round": r, "n": n, "final": r == rounds, "kind": "delta",
                       "ledger": {}, "stats": stats}
                t0 = time.perf_counter()
                link.post(msg, delta)
                while (got := link.poll()) is None:
                    pass
                if r:                        # round 0 warms up the connection
                    times.append(time.perf_counter() - t0)
                assert got[1][0] == r + 1, got[1][0]
            t = float(np.median(times))
            results.append({"values": n, "mbytes_per_round": 2 * 4 * n / 1e6, "s_per_round": round(t, 5),
                            "bytes_per_s": round(2 * 4 * n / t, 1), "raw_mpi_s_per_round": round(raw_t, 5),
                            "raw_mpi_bytes_per_s": round(2 * 4 * n / raw_t, 1), "rounds": rounds})
            print(f"P = {n:>9,} float32: {t * 1e3:8.2f} ms per sync round, "
                  f"{2 * 4 * n / t / 1e9:6.2f} GB/s both ways (raw MPI Send/Recv: {raw_t * 1e3:8.2f} ms, "
                  f"{2 * 4 * n / raw_t / 1e9:6.2f} GB/s)", flush=True)
    if rank == 1:
        record = {"bench": "mpi_path", "mpi": MPI.Get_library_version().splitlines()[0],
                  "host": platform.node(), "quick": args.quick, "results": results}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(record, indent=1))
        print(json.dumps(record))


def over_hosts(args) -> None:
    """This benchmark with its two ranks on two namespace hosts, once per link setting."""
    from bench.hosts import Hosts, unavailable
    why = unavailable()
    if why:
        raise SystemExit(f"bench.mpi_path --hosts: {why}")
    root = Path(__file__).resolve().parents[1]
    settings = [("veth, unshaped", None, None)]
    settings += [(f"tbf rate {r}", r, None) for r in (args.rate.split(",") if args.rate else [])]
    if args.delay:
        settings.append((f"netem delay {args.delay}", None, args.delay))
    env = {**os.environ, "PYTHONPATH": str(root)}
    runs = []
    with Hosts(2) as hosts:
        for label, rate, delay in settings:
            hosts.unshape()
            why = hosts.shape(rate, delay)
            if why:
                print(f"{label}: skipped ({why})", flush=True)
                runs.append({"link": label, "skipped": why})
                continue
            print(f"-- {label}", flush=True)
            rec = hosts.dir / "mpi_path.json"
            before = hosts.link_bytes(1)
            cmd = [sys.executable, "-m", "bench.mpi_path", "--rounds", str(args.rounds), "--out", str(rec)]
            cmd += ["--quick"] if args.quick else ["--sizes", args.sizes]
            r = hosts.run(hosts.mpiexec(1, *cmd), cwd=root, env=env, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"{label}: mpiexec failed ({r.returncode}):\n{r.stdout}{r.stderr}")
            print("\n".join(line for line in r.stdout.splitlines() if line.startswith("P =")), flush=True)
            got = json.loads(rec.read_text())
            rx, tx = (a - b for a, b in zip(hosts.link_bytes(1), before))
            runs.append({"link": label, "rate": rate, "delay": delay, "mpi": got["mpi"],
                         "results": got["results"], "host1_eth0_bytes": {"rx": rx, "tx": tx}})
    record = {"bench": "mpi_path --hosts", "hosts": 2, "machine": platform.node(),
              "quick": args.quick, "runs": runs}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
