"""Test hosts on one machine: network namespaces joined by a bridge, links shaped by the kernel.

    python tools/netns_hosts.py --hosts 2 --mbit 100 -- -n 2 prism-run --input "Edge devices share the work."
    python tools/netns_hosts.py --hosts 3 --check          # can this machine make test hosts? (exit 0/1)

Each test host is a network namespace `<prefix>-h<i>` with its own hostname (`unshare --uts`), one
interface `eth0` with the address 10.77.S.(i+1)/24 (S is chosen free per cluster), its peer on a
bridge in the root namespace, which holds 10.77.S.254 (mpiexec's own address: the proxies dial
it). With a rate, the host's uplink (its `eth0`) and downlink (the bridge-side peer) each get a
`tbf` qdisc at that rate: the kernel queues and paces the packets, TCP sees real backpressure.
There is no added latency (`netem` is not available everywhere), only rate.

A host can be a slower device: `cpu=[1, 0.5]` (`--cpu 1,0.5`) gives host i a share of one CPU core
through a cgroup of its own (`<prefix>-h<i>`, CPU quota `share` x 100 ms per 100 ms; cgroup v2's
`cpu.max` or v1's `cpu.cfs_quota_us`, whichever the machine has). The launcher puts the host's
hydra proxy in that cgroup before it starts, so the proxy and every rank on that host share the
quota. `cpu_quota_available()` says whether cgroups can be written here.

A command runs under MPICH's own launcher across the hosts, exactly as on real machines:

    mpiexec -hosts 10.77.S.1,10.77.S.2 -n 2 -launcher ssh -launcher-exec LAUNCH -localhost 10.77.S.254 CMD

where LAUNCH (written per cluster) takes the place of ssh: it runs the hydra proxy inside the
namespace that owns the address, under its hostname. The environment (`TCP_ENV`) makes MPICH go
over TCP: without `MPIR_CVAR_NOLOCAL=1` MPICH uses shared memory between ranks on the same
kernel even across namespaces, and every rate is then a fiction.

Traffic stays inside: only addresses this tool assigned to its own hosts are used. Everything
made (namespaces, bridge, veths, the launcher file) carries the cluster's unique prefix and is
removed on exit, also when the job fails; `cleanup(prefix)` removes leftovers by that prefix.
Needs root, `ip netns`, `unshare` and the `tbf` qdisc (`available()` says which is missing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else shutil.which("mpiexec")
PREFIX = "prn"  # every namespace, bridge and veth made here starts with this
IFACE = "eth0"  # the interface inside every test host
# MPICH over TCP between the hosts: no shared memory between ranks on one kernel (NOLOCAL), the
# OFI netmod with libfabric's tcp provider on the hosts' interface. (The pip mpich also has UCX:
# MPICH_CH4_NETMOD=ucx UCX_TLS=tcp works too.)
TCP_ENV = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": IFACE}


# The launcher's reachability check (a one-line Python program, as ssh's connection would be).
REACH = ("import socket,sys; s=socket.socket(); s.settimeout(1.5); "
         "exec('try: s.connect((sys.argv[1], 9))\\nexcept ConnectionRefusedError: pass\\n"
         "except OSError: sys.exit(1)')")

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V2 = (CGROUP_ROOT / "cgroup.controllers").exists()
CPU_PERIOD_US = 100_000


def _cgroup(name: str) -> Path:
    """The folder of cgroup `name` under the CPU controller (v2: the unified tree; v1: cpu/)."""
    return CGROUP_ROOT / name if CGROUP_V2 else CGROUP_ROOT / "cpu" / name


def _make_cgroup(name: str, share: float) -> Path:
    """A cgroup whose processes get `share` of one CPU core between them; returns its folder."""
    if CGROUP_V2:  # the cpu controller must be on for the root's children
        (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu")
    d = _cgroup(name)
    d.mkdir(exist_ok=True)
    quota = max(1000, int(share * CPU_PERIOD_US))
    if CGROUP_V2:
        (d / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
    else:
        (d / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (d / "cpu.cfs_quota_us").write_text(str(quota))
    return d


def _remove_cgroups(prefix: str) -> list[str]:
    """rmdir every cgroup named <prefix>* (their processes must be gone first)."""
    gone = []
    parent = _cgroup("")
    for d in parent.glob(f"{prefix}*") if parent.is_dir() else []:
        for _ in range(50):  # a killed process leaves its cgroup a moment later
            try:
                d.rmdir()
                gone.append(f"cgroup {d.name}")
                break
            except OSError:
                time.sleep(0.05)
    return gone


def cpu_quota_available() -> str | None:
    """None when CPU quotas can be set here (cgroups writable), else why not."""
    name = f"{PREFIX}cpu{os.getpid() % 100000}"
    try:
        _make_cgroup(name, 0.5)
    except OSError as e:
        return f"CPU quotas need a writable cgroup CPU controller ({'v2' if CGROUP_V2 else 'v1'}): {e}"
    finally:
        try:
            _cgroup(name).rmdir()
        except OSError:
            pass
    return None


def _ip(*args, ns: str | None = None, check=True) -> subprocess.CompletedProcess:
    """`ip ARGS` (inside namespace ns if given)."""
    return _sh("ip", *args, ns=ns, check=check)


def _sh(*args, ns: str | None = None, check=True) -> subprocess.CompletedProcess:
    """Run a command (inside namespace ns if given); RuntimeError with its stderr if it fails."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def available() -> str | None:
    """None when this machine can make test hosts, else why not (for a test's skip reason)."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, bridges, tc)"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"test hosts need the `{tool}` command"
    if MPIEXEC is None:
        return "test hosts need mpiexec (pip install mpich)"
    name = f"{PREFIX}chk{os.getpid() % 100000}"
    try:
        p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if p.returncode != 0:
            return f"`ip netns add` fails here: {p.stderr.strip()}"
        p = subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                            "rate", "10mbit", "burst", "16kb", "latency", "50ms"], capture_output=True, text=True)
        if p.returncode != 0:
            return f"the kernel has no tbf qdisc here: {p.stderr.strip()}"
        p = subprocess.run(["ip", "netns", "exec", name, "unshare", "--uts", "true"], capture_output=True, text=True)
        if p.returncode != 0:
            return f"`unshare --uts` fails here: {p.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def cleanup(prefix: str = PREFIX) -> list[str]:
    """Remove every namespace, link and cgroup whose name starts with prefix, the processes in
    those namespaces and the mpiexec that launched into them; returns what was removed."""
    gone = []
    # mpiexec runs in the root namespace; it is known by its launcher, in this prefix's folder
    mark = os.path.join(tempfile.gettempdir(), prefix + ("-" if prefix != PREFIX else ""))
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if mark in proc.joinpath("cmdline").read_bytes().decode(errors="replace") and int(proc.name) != os.getpid():
                os.kill(int(proc.name), signal.SIGKILL)
                gone.append(f"pid {proc.name}")
        except (OSError, ValueError):
            pass
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(prefix):
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)
            gone.append(ns)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        dev = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if dev.startswith(prefix):
            _ip("link", "del", dev, check=False)
            gone.append(dev)
    return gone + _remove_cgroups(prefix)


def _tbf(dev: str, mbit: float, ns: str | None, verb: str = "add") -> None:
    """dev's root qdisc: tbf at mbit (burst: 10 ms of the rate, at least 16 KB so a 1 Mbit/s
    link still passes full frames; queue up to 200 ms before dropping, which TCP recovers)."""
    burst = max(16 * 1024, int(mbit * 1e6 / 8 * 0.01))
    _sh("tc", "qdisc", verb, "dev", dev, "root", "tbf", "rate", f"{mbit:g}mbit", "burst", str(burst),
        "latency", "200ms", ns=ns)


def _free_subnet() -> int:
    """A third octet S with 10.77.S.0/24 unused on this machine."""
    used = _ip("-o", "-4", "addr", "show", check=False).stdout + _ip("route", "show", check=False).stdout
    for s in [os.getpid() % 200 + 20, *range(20, 250)]:
        if f"10.77.{s}." not in used:
            return s
    raise RuntimeError("no free 10.77.S.0/24 subnet for the test hosts")


class Hosts:
    """K test hosts (see the module docstring). A context manager: everything is removed on exit.

    ips[i], hostnames[i], namespaces[i] name host i; `mpiexec(cmd)` is the launch across them;
    `tx_bytes()` reads the kernel's counters; `set_rate`, `link_down`, `link_up` change a link
    while a job runs.
    """

    def __init__(self, k: int, mbit: float | None = None, tag: str | None = None, cpu: list | None = None):
        if k < 1:
            raise ValueError(f"k (the number of hosts) must be >= 1, got {k}")
        if mbit is not None and not mbit > 0:
            raise ValueError(f"mbit must be a rate > 0 in Mbit/s or None (unshaped), got {mbit}")
        if cpu is not None and (len(cpu) != k or not all(isinstance(c, (int, float)) and 0 < c <= os.cpu_count()
                                                         for c in cpu)):
            raise ValueError(f"cpu must give each of the {k} hosts a share of a core in (0, {os.cpu_count()}], "
                             f"got {cpu}")
        self.k, self.mbit, self.cpu = k, mbit, cpu
        self.prefix = f"{PREFIX}{tag or os.getpid() % 100000}"  # <= 8 chars: veth names stay < 16
        self.namespaces = [f"{self.prefix}-h{i}" for i in range(k)]
        self.hostnames = [f"testhost{i}" for i in range(k)]
        self.bridge = f"{self.prefix}br"
        self.veths = [f"{self.prefix}v{i}" for i in range(k)]  # the bridge-side peers
        self.ips: list[str] = []
        self.own_ip = ""
        self._dir = None
        self.launcher = ""

    # -- making and removing ------------------------------------------------------------------

    def __enter__(self) -> "Hosts":
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _make(self) -> None:
        cleanup(self.prefix)  # leftovers of an earlier process with the same pid
        s = _free_subnet()
        self.ips = [f"10.77.{s}.{i + 1}" for i in range(self.k)]
        self.own_ip = f"10.77.{s}.254"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.own_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for ns, veth, ip in zip(self.namespaces, self.veths, self.ips):
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            _ip("link", "set", f"{veth}p", "netns", ns)
            _ip("link", "set", f"{veth}p", "name", IFACE, ns=ns)
            _ip("addr", "add", f"{ip}/24", "dev", IFACE, ns=ns)
            _ip("link", "set", IFACE, "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
        if self.mbit is not None:
            for i in range(self.k):
                self.set_rate(i, self.mbit, verb="add")
        self._dir = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.launcher = str(Path(self._dir) / "launch")
        # With a CPU share, the launcher joins the host's cgroup first: the proxy and its ranks inherit it.
        join = [""] * self.k
        for i, share in enumerate(self.cpu or []):
            procs = _make_cgroup(self.namespaces[i], share) / "cgroup.procs"
            join[i] = f"echo $$ > {procs} && "
        cases = "\n".join(f"  {ip}) {j}exec ip netns exec {ns} unshare --uts sh -c 'hostname {h} && exec sh -c \"$1\"' "
                          f'launch "$cmd" ;;'
                          for ip, ns, h, j in zip(self.ips, self.namespaces, self.hostnames, join))
        # Called as ssh would be: `launch [-x ...] HOST "COMMAND"` (hydra passes the proxy's
        # command line as one string, for a remote shell to split). Like ssh, it needs the
        # network: a host whose link is down does not answer a TCP connection attempt (a refused
        # one is an answer) and the launch fails with ssh's code, 255.
        Path(self.launcher).write_text(f"""#!/bin/sh
while [ "${{1#-}}" != "$1" ]; do shift; done
host="$1"; shift; cmd="$*"
{sys.executable} -c "{REACH}" "$host" || {{ echo "launch: $host cannot be reached" >&2; exit 255; }}
case "$host" in
{cases}
  *) echo "launch: $host is not a test host" >&2; exit 255 ;;
esac
""")
        os.chmod(self.launcher, 0o755)

    def close(self) -> None:
        """Kill what runs in the hosts and remove them, the bridge and the launcher."""
        cleanup(self.prefix)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- links --------------------------------------------------------------------------------

    def set_rate(self, i: int, mbit: float | None, verb: str = "replace") -> None:
        """Host i's uplink and downlink at mbit (None: unshaped), now (a running job sees it)."""
        for dev, ns in ((IFACE, self.namespaces[i]), (self.veths[i], None)):
            if mbit is None:
                _sh("tc", "qdisc", "del", "dev", dev, "root", ns=ns, check=False)
            else:
                _tbf(dev, mbit, ns, verb)

    def link_down(self, i: int) -> None:
        """Cut host i off (its interface down: nothing in or out, as a pulled cable)."""
        _ip("link", "set", IFACE, "down", ns=self.namespaces[i])

    def link_up(self, i: int) -> None:
        _ip("link", "set", IFACE, "up", ns=self.namespaces[i])

    # -- counters -----------------------------------------------------------------------------

    def tx_bytes(self) -> list[int]:
        """Bytes each host's interface has sent (the kernel's counter, read inside its namespace)."""
        return [int(_sh("cat", f"/sys/class/net/{IFACE}/statistics/tx_bytes", ns=ns).stdout) for ns in self.namespaces]

    def pids(self) -> list[int]:
        """Processes running in any of the hosts (the hydra proxies and the ranks)."""
        out = []
        for ns in self.namespaces:
            out += [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        return out

    # -- running ------------------------------------------------------------------------------

    def mpiexec(self, cmd: list[str], per_host: int = 1) -> list[str]:
        """The mpiexec command line running cmd on every host (per_host ranks each), over TCP."""
        hosts = ",".join(f"{ip}:{per_host}" for ip in self.ips)
        return [MPIEXEC, "-hosts", hosts, "-n", str(self.k * per_host), "-launcher", "ssh",
                "-launcher-exec", self.launcher, "-localhost", self.own_ip, *cmd]

    def env(self, base: dict | None = None) -> dict:
        """base (default os.environ) with MPICH set to go over TCP between the hosts."""
        return {**(os.environ if base is None else base), **TCP_ENV}

    def run(self, cmd: list[str], per_host: int = 1, timeout: float = 300, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        """Run cmd across the hosts and wait (killed, with everything in the hosts, at timeout)."""
        p = subprocess.Popen(self.mpiexec(cmd, per_host), env=self.env(env), start_new_session=True,
                             stdout=kw.pop("stdout", subprocess.PIPE), stderr=kw.pop("stderr", subprocess.PIPE),
                             stdin=subprocess.DEVNULL, text=True, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(p)
            out, err = p.communicate()
            err = (err or "") + f"\n[netns_hosts] killed after {timeout:g} s"
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def kill(self, p: subprocess.Popen | None = None) -> None:
        """Kill mpiexec (its process group) and every process in the hosts."""
        if p is not None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def exit_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so `with Hosts(...)` removes the hosts when a
    driver is stopped (`timeout`, a closed terminal) and not only when it ends."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=2, help="how many test hosts (default 2)")
    ap.add_argument("--mbit", type=float, help="shape every uplink and downlink to this rate (default: unshaped)")
    ap.add_argument("--per-host", type=int, default=1, help="ranks per host")
    ap.add_argument("--cpu", help="each host's share of one CPU core, e.g. 1,0.5 (a cgroup quota; default: none)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--check", action="store_true", help="say whether this machine can make test hosts")
    ap.add_argument("--cleanup", action="store_true", help=f"remove leftovers named {PREFIX}* and stop")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command for every rank (after --)")
    args = ap.parse_args(argv)
    if args.cleanup:
        print("\n".join(cleanup()) or "nothing to remove")
        return 0
    why = available()
    if args.check or why:
        print(why or "ok: this machine can make test hosts")
        return 1 if why else 0
    exit_on_signals()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command to run after --")
    cpu = None
    if args.cpu:
        try:
            cpu = [float(x) for x in args.cpu.split(",")]
        except ValueError:
            ap.error(f"--cpu must be shares of a core separated by commas, e.g. 1,0.5; got {args.cpu!r}")
        why = cpu_quota_available()
        if why:
            print(why)
            return 1
    try:
        hosts = Hosts(args.hosts, args.mbit, cpu=cpu)
    except ValueError as e:
        ap.error(str(e).replace("cpu must", "--cpu must"))
    with hosts as h:
        before = h.tx_bytes()
        p = h.run(cmd, args.per_host, timeout=args.timeout, stdout=None, stderr=None)
        sent = [a - b for a, b in zip(h.tx_bytes(), before)]
        print(f"[netns_hosts] hosts {', '.join(f'{n}={ip}' for n, ip in zip(h.hostnames, h.ips))}; "
              f"kernel tx bytes {sent}; exit {p.returncode}", file=sys.stderr)
        return p.returncode


if __name__ == "__main__":
    sys.exit(main())
