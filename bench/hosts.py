"""Several hosts on one machine: network namespaces joined by TCP, for MPI across real hosts.

    python -m bench.hosts --hosts 2 --ranks 3 [--rate 1gbit] -- \\
        python -m gadei train --backend mpi --task probe --steps 400 --lr 1 --out runs/h2

(as root) runs the program with `mpiexec -n hosts*ranks` across the hosts, then removes them.
From Python: `with Hosts(2) as hosts: hosts.run(hosts.mpiexec(3, *program), cwd=...)`
(tests/test_mpi_hosts.py, bench/mpi_path.py --hosts). Every host is

    a network namespace   its own `eth0` (a veth pair) with an address from the benchmarking
                          range 198.18.0.0/15, on a bridge that lives in a namespace of its own
                          (the "switch"): the harness's traffic never touches the machine's
                          own network namespace, which gets no link and no address
    mount, UTS and IPC    a private tmpfs on /dev/shm (so no segment is shared between hosts),
    namespaces            its own hostname (MPICH decides "same node" by the hostname) and an
                          /etc/hosts naming every host
    a keeper process      `sleep` inside those namespaces, which holds them and which `nsenter`
                          enters by its pid (the pid is in RUNDIR/<host>.pid, read by name)

`mpiexec -f RUNDIR/hostfile -launcher ssh -launcher-exec RUNDIR/launch` runs on the first host
(the head node, as on a cluster); hydra calls the launcher as `launch <host> <command...>`, the
way it calls ssh, and the launcher enters that host's namespaces and runs the command with
`sh -c` (as sshd would). No ssh daemon. The file system is shared, like an NFS home: every host
sees the worktree, the data and the output directory.

`Hosts.close()` (also on failure, and for stale harnesses of dead processes at the next start)
kills every process in the hosts' namespaces, deletes the namespaces (with them the veths and the
bridge) and the run directory; the private /dev/shm goes with its last process. `lose(host)`
takes a host away mid-run: its processes SIGKILLed (its kernel stays up, so its TCP connections
close) or its link set down (nothing closes, nothing gets through). `shape(rate, delay)` puts a
tc qdisc on every host's link (tbf for a rate, netem for a delay), where the kernel has it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "gadei-hosts-"         # namespaces and run directories: PREFIX + "<owner pid>-..."
RUN = Path("/run")
NET = "198.18.0"                # host i: NET.(10 + i)/24 (RFC 2544 benchmarking range)
ROOT = Path(__file__).resolve().parents[1]


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise HostsError(f"`{shlex.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


class HostsError(RuntimeError):
    """The harness could not build or tear down its hosts; says which command and why."""


def unavailable() -> str | None:
    """Why namespaces-as-hosts cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network, mount and UTS namespaces)"
    for tool in ("ip", "unshare", "nsenter", "mpiexec"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    r = _sh("ip", "netns", "add", probe, check=False)
    if r.returncode:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    try:
        r = _sh("ip", "-n", probe, "link", "add", "name", "a", "type", "veth", "peer", "name", "b",
                check=False)
        if r.returncode:
            return f"cannot create a veth pair: {r.stderr.strip()}"
        r = _sh("unshare", "--mount", "--uts", "--ipc", "--", "true", check=False)
        if r.returncode:
            return f"cannot create mount/UTS/IPC namespaces: {r.stderr.strip()}"
    finally:
        _sh("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    index: int
    name: str                   # hostname, as MPICH and the hostfile see it
    addr: str
    netns: str                  # `ip netns` name
    keeper: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.keeper.pid

    @property
    def net_inode(self) -> int:
        return os.stat(f"/run/netns/{self.netns}").st_ino


def _net_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _pids_in(inode: int) -> list[int]:
    """Every process whose network namespace is `inode` (zombies included: they go with a reap)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _net_inode(int(p)) == inode]


def _kill_all_in(inode: int, timeout: float = 10.0) -> None:
    """SIGKILL every process in network namespace `inode` until none is left; repeated
    because a dying job may still fork (a PS restart)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in _pids_in(inode) if not _zombie(p)]
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise HostsError(f"processes {pids} in a host's namespace survive SIGKILL")
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2:].split()[0] == b"Z"


def sweep_stale() -> list[str]:
    """Remove the hosts of harnesses whose owner process is gone (killed before its teardown)."""
    gone = []
    netns = RUN / "netns"
    names = sorted(p.name for p in netns.iterdir()) if netns.is_dir() else []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        owner = int(name[len(PREFIX):].split("-")[0])
        if owner != os.getpid() and Path(f"/proc/{owner}").exists():
            continue
        try:
            _kill_all_in(os.stat(netns / name).st_ino)
        except OSError:
            pass
        _sh("ip", "netns", "del", name, check=False)
        gone.append(name)
    for d in RUN.glob(PREFIX + "*"):
        owner = int(d.name[len(PREFIX):].split("-")[0])
        if owner == os.getpid() or not Path(f"/proc/{owner}").exists():
            shutil.rmtree(d, ignore_errors=True)
    return gone


class Hosts:
    """`n` hosts on this machine (a context manager; `close()` is idempotent).

    hosts = Hosts(2).start(); hosts.run(["mpiexec", ...]) runs a command on host 0 (the head
    node) with `hosts.mpiexec_args()` telling hydra where the others are.
    """

    def __init__(self, n: int, shm_size: str = "2g"):
        if not 1 <= n <= 200:
            raise ValueError(f"hosts must be 1..200, not {n}")
        self.n, self.shm_size = n, shm_size
        tag = f"{PREFIX}{os.getpid()}-{time.monotonic_ns() % 100000}"
        self.dir = RUN / tag
        self.switch = f"{tag}-sw"
        self.hosts = [Host(i, f"host{i}", f"{NET}.{10 + i}", f"{tag}-h{i}") for i in range(n)]
        self._made: list[str] = []       # namespaces made so far (teardown deletes these)

    # -- building
    def start(self) -> "Hosts":
        try:
            sweep_stale()
            self.dir.mkdir(parents=True)
            (self.dir / "hosts").write_text("127.0.0.1 localhost\n" +
                                            "".join(f"{h.addr} {h.name}\n" for h in self.hosts))
            self._netns(self.switch)
            _sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _sh("ip", "-n", self.switch, "link", "set", "br0", "up")
            for h in self.hosts:
                self._host(h)
            launch = self.dir / "launch"
            launch.write_text(LAUNCH.format(python=sys.executable, dir=str(self.dir)))
            launch.chmod(0o755)
            self.wait_reachable()
        except BaseException:
            self.close()
            raise
        return self

    def _netns(self, name: str) -> None:
        _sh("ip", "netns", "add", name)
        self._made.append(name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")

    def _host(self, h: Host) -> None:
        self._netns(h.netns)
        # the pair is made inside the namespaces: no link ever exists in the machine's own
        _sh("ip", "-n", h.netns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{h.index}",
            "netns", self.switch)
        _sh("ip", "-n", self.switch, "link", "set", f"p{h.index}", "master", "br0", "up")
        _sh("ip", "-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
        _sh("ip", "-n", h.netns, "link", "set", "eth0", "up")
        # unshare without --fork: the keeper's pid is this Popen's pid (nsenter and unshare exec)
        script = (f"mount -t tmpfs -o mode=1777,size={self.shm_size} tmpfs /dev/shm && "
                  f"mount --bind {self.dir / 'hosts'} /etc/hosts && hostname {h.name} && "
                  "echo ready && exec sleep infinity")
        h.keeper = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{h.netns}", "--", "unshare", "--mount", "--uts", "--ipc",
             "--propagation", "private", "--", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = h.keeper.stdout.readline().strip()
        if line != "ready":
            raise HostsError(f"{h.name}'s namespaces: {h.keeper.stderr.read().strip() or 'keeper died'}")
        (self.dir / f"{h.name}.pid").write_text(str(h.pid))

    def wait_reachable(self) -> None:
        """Every host accepts a TCP connection from host 0 at its name (checks addresses, the
        bridge and every /etc/hosts before MPI depends on them)."""
        for h in self.hosts[1:]:
            server = self.popen([sys.executable, "-c", _ACCEPT, h.addr], host=h.index,
                                stdout=subprocess.PIPE, text=True)
            try:
                port = server.stdout.readline().strip()
                r = self.run([sys.executable, "-c", _CONNECT, h.name, port], capture_output=True, text=True,
                             timeout=30)
                if r.returncode:
                    raise HostsError(f"host0 cannot reach {h.name} ({h.addr}): {r.stderr.strip()}")
            finally:
                server.kill()
                server.wait()
                server.stdout.close()

    # -- using
    def enter(self, host: int = 0, cwd: str | Path | None = None) -> list[str]:
        """The command prefix that runs a command inside `host`'s namespaces, in `cwd`."""
        return ["nsenter", "-t", str(self.hosts[host].pid), "--net", "--mount", "--uts", "--ipc",
                f"--wd={cwd or os.getcwd()}", "--"]

    def run(self, cmd: list, host: int = 0, cwd=None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.enter(host, cwd) + list(map(str, cmd)), **kw)

    def popen(self, cmd: list, host: int = 0, cwd=None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.enter(host, cwd) + list(map(str, cmd)), **kw)

    def hostfile(self, ranks_per_host: int | list[int]) -> Path:
        """RUNDIR/hostfile with `ranks_per_host` ranks on each host (a list: per host; hosts
        given 0 ranks, or beyond the list, are left out)."""
        per = ranks_per_host if isinstance(ranks_per_host, list) else [ranks_per_host] * self.n
        path = self.dir / "hostfile"
        path.write_text("".join(f"{h.name}:{k}\n" for h, k in zip(self.hosts, per) if k))
        return path

    def mpiexec(self, ranks_per_host: int | list[int], *args) -> list[str]:
        """`mpiexec` over these hosts with `ranks_per_host` ranks each (`args`: the program),
        to run on host 0 (`run`/`popen`)."""
        per = ranks_per_host if isinstance(ranks_per_host, list) else [ranks_per_host] * self.n
        return [shutil.which("mpiexec"), "-f", str(self.hostfile(per)), "-launcher", "ssh",
                "-launcher-exec", str(self.dir / "launch"), "-n", str(sum(per)), *map(str, args)]

    # -- observing
    def processes(self, host: int) -> list[int]:
        """Live processes in `host` besides its keeper."""
        h = self.hosts[host]
        return [p for p in _pids_in(h.net_inode) if p != h.pid and not _zombie(p)]

    def shm(self, host: int) -> list[str]:
        """The names in `host`'s private /dev/shm (seen through its keeper's root)."""
        h = self.hosts[host]
        if h.keeper is None or h.keeper.poll() is not None:
            return []              # the keeper is gone: the tmpfs with it
        return sorted(os.listdir(f"/proc/{h.pid}/root/dev/shm"))

    def link_bytes(self, host: int) -> tuple[int, int]:
        """(received, sent) bytes on `host`'s eth0 so far."""
        h = self.hosts[host]
        rx = _sh("ip", "netns", "exec", h.netns, "cat", "/sys/class/net/eth0/statistics/rx_bytes")
        tx = _sh("ip", "netns", "exec", h.netns, "cat", "/sys/class/net/eth0/statistics/tx_bytes")
        return int(rx.stdout), int(tx.stdout)

    # -- faults and links
    def lose(self, host: int, how: str = "kill") -> None:
        """Take `host` away: "kill" SIGKILLs every process in it (its keeper too: a power cut,
        its /dev/shm goes), "link" sets its eth0 down (the processes live on, unreachable)."""
        h = self.hosts[host]
        if how == "kill":
            _kill_all_in(h.net_inode)
            h.keeper.wait()
        elif how == "link":
            _sh("ip", "-n", h.netns, "link", "set", "eth0", "down")
        else:
            raise ValueError(f"how must be 'kill' or 'link', not {how!r}")

    def shape(self, rate: str | None = None, delay: str | None = None) -> str | None:
        """Shape every host's eth0 (egress, so both directions between two hosts): `rate` with
        tc tbf (e.g. "1gbit"), `delay` (one way, e.g. "0.5ms") with tc netem. Returns why not
        where the kernel lacks the qdisc (nothing is shaped then)."""
        if delay:
            args = ["netem", "delay", delay] + (["rate", rate] if rate else []) + ["limit", "100000"]
        elif rate:      # burst: a few ms of the rate, so tbf itself is not the bottleneck
            args = ["tbf", "rate", rate, "burst", "1mb", "latency", "100ms"]
        else:
            return None
        for h in self.hosts:
            r = _sh("ip", "netns", "exec", h.netns, "tc", "qdisc", "replace", "dev", "eth0", "root",
                    *args, check=False)
            if r.returncode:
                self.unshape()
                return f"tc {args[0]}: {r.stderr.strip()}"
        return None

    def unshape(self) -> None:
        for h in self.hosts:
            _sh("ip", "netns", "exec", h.netns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)

    # -- teardown
    def close(self) -> None:
        """Kill every process in the hosts, delete their namespaces and the run directory."""
        errors = []
        for h in self.hosts:
            if h.netns in self._made:
                try:
                    _kill_all_in(h.net_inode)
                except (OSError, HostsError) as e:
                    errors.append(f"{h.name}: {e}")
            if h.keeper is not None:
                h.keeper.wait()
                for f in (h.keeper.stdout, h.keeper.stderr):
                    f.close()
        for name in reversed(self._made):
            r = _sh("ip", "netns", "del", name, check=False)
            if r.returncode:
                errors.append(f"ip netns del {name}: {r.stderr.strip()}")
        self._made.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise HostsError("teardown: " + "; ".join(errors))

    def __enter__(self) -> "Hosts":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


_ACCEPT = ("import socket, sys; s = socket.create_server((sys.argv[1], 0)); "
           "print(s.getsockname()[1], flush=True); s.settimeout(30); s.accept()")
_CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)"

# hydra calls this like ssh: `launch [ssh options] <host> <command words...>`; sshd would run the
# words joined by spaces with the user's shell, so we do too (hydra quotes its arguments for that
# shell). Like an ssh client it stays on the launching host while the command runs, says when the
# connection to the host was lost (hydra itself does not name the host whose proxy vanished), and
# leaves when mpiexec is gone (a partitioned host's processes are out of reach, and must not hold
# a process on the launching host). The loss is written to mpiexec's own stderr, where ssh's
# messages would reach the user: hydra forwards our stderr only while it lives, and a lost proxy
# makes it exit at once.
LAUNCH = """#!{python}
import os, subprocess, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):     # ssh options hydra adds (-x: no X forwarding)
    args.pop(0)
host, words = args[0], " ".join(args[1:])
try:
    pid = open(os.path.join({dir!r}, host + ".pid")).read().strip()
except FileNotFoundError:
    sys.exit(f"gadei hosts: no host named {{host}}")
mpiexec = os.getppid()
user = open(f"/proc/{{mpiexec}}/fd/2", "w")
child = subprocess.Popen(["nsenter", "-t", pid, "--net", "--mount", "--uts", "--ipc", "--",
                          "sh", "-c", words])
while True:
    try:
        code = child.wait(timeout=0.5)
        break
    except subprocess.TimeoutExpired:
        if os.getppid() != mpiexec:
            print(f"gadei hosts: mpiexec is gone; leaving the command on {{host}}, which is out of reach",
                  file=user, flush=True)
            os._exit(255)
if code < 0:
    print(f"gadei hosts: connection to {{host}} lost: its hydra proxy was killed (signal {{-code}})",
          file=user, flush=True)
    sys.exit(255)
sys.exit(code)
"""


def main() -> None:
    p = argparse.ArgumentParser(description="Run an MPI program with mpiexec across N namespace "
                                "hosts (mpiexec runs on host 0); the hosts are removed afterwards.")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks", type=int, default=3, help="ranks per host")
    p.add_argument("--rate", help="tc tbf rate on every link, e.g. 1gbit")
    p.add_argument("--delay", help="tc netem delay on every link (one way), e.g. 0.5ms")
    p.add_argument("program", nargs=argparse.REMAINDER, help="the MPI program and its arguments")
    args = p.parse_args()
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        p.error("name the MPI program, e.g. -- python -m gadei train --backend mpi ...")
    why = unavailable()
    if why:
        raise SystemExit(f"bench.hosts: {why}")
    with Hosts(args.hosts) as hosts:
        if args.rate or args.delay:
            why = hosts.shape(args.rate, args.delay)
            if why:
                raise SystemExit(f"bench.hosts: cannot shape the links: {why}")
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        code = hosts.run(hosts.mpiexec(args.ranks, *program), env=env).returncode
    sys.exit(code)


if __name__ == "__main__":
    main()
