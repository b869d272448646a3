"""Which MPI library, transport and hosts a job runs on (what `prism-run --verbose` prints).

    info = describe(comm)        # collective: every rank calls it; the same dict on every rank
    print(format_transport(info))

The MPI library says its name and version (`MPI.Get_library_version`) but not which transport
it chose, so the transport is derived, and says so: from the library's name and the
environment variables that decide it. MPICH (ch4 device) uses shared memory between ranks on
the same host unless `MPIR_CVAR_NOLOCAL=1`, and its netmod (`MPIR_CVAR_CH4_NETMOD` or the
older `MPICH_CH4_NETMOD`: ofi or ucx; the first built in when unset) between the others, over
the libfabric provider `FI_PROVIDER` or the UCX transports `UCX_TLS`. Open MPI's choice comes
from `OMPI_MCA_pml` / `OMPI_MCA_btl`. "Same host" means the same `MPI.Get_processor_name`, which
is the host name: containers or network namespaces with their own host names on one kernel are
different hosts to this, but MPICH still finds shared memory between them unless told not to,
which is why NOLOCAL matters on such setups.
"""

from __future__ import annotations

import os

from .control import allgather_json

NETMOD_VARS = ("MPIR_CVAR_CH4_NETMOD", "MPICH_CH4_NETMOD")
TRUE = ("1", "yes", "true", "on")


def _mpich_netmod(version: str, env) -> str:
    """MPICH's netmod over the network with its provider, e.g. "ofi (FI_PROVIDER=tcp)"."""
    mod = next((env[v] for v in NETMOD_VARS if env.get(v)), None)
    if mod is None:  # the first one built in is MPICH's default; the version string lists them
        device = next((line.split(":", 1)[1] for line in version.splitlines() if line.startswith("MPICH Device")), "")
        mod = device.strip().removeprefix("ch4:").split(",")[0].split()[0] if "ch4" in device else "default"
        mod += " (default)"
    if mod.startswith("ofi"):
        prov = env.get("FI_PROVIDER")
        mod += f", FI_PROVIDER={prov}" if prov else ", libfabric's first provider (FI_PROVIDER unset)"
        if env.get("FI_TCP_IFACE"):
            mod += f", FI_TCP_IFACE={env['FI_TCP_IFACE']}"
    elif mod.startswith("ucx"):
        tls = env.get("UCX_TLS")
        mod += f", UCX_TLS={tls}" if tls else ", UCX's choice of transports (UCX_TLS unset)"
    return mod


def local_transport(version: str, env=None) -> tuple[str, str]:
    """(between ranks on one host, between hosts) as this rank's library and environment decide."""
    env = os.environ if env is None else env
    if "MPICH" in version:
        net = _mpich_netmod(version, env)
        nolocal = env.get("MPIR_CVAR_NOLOCAL", "").lower() in TRUE
        return (f"netmod {net} (MPIR_CVAR_NOLOCAL=1)" if nolocal else "shared memory", f"netmod {net}")
    if "Open MPI" in version:
        pml, btl = env.get("OMPI_MCA_pml", ""), env.get("OMPI_MCA_btl", "")
        sel = ", ".join(x for x in (f"pml={pml}" if pml else "", f"btl={btl}" if btl else "") if x)
        return ("shared memory (vader/sm btl) unless excluded" + (f"; {sel}" if sel else ""),
                f"Open MPI's choice{f' ({sel})' if sel else ' (OMPI_MCA_pml/btl unset)'}")
    return ("unknown", "unknown")


def describe(comm) -> dict:
    """The library, every rank's host, and the transport between each pair of hosts (collective)."""
    MPI = comm.MPI
    version = MPI.Get_library_version().strip()
    mine = dict(host=MPI.Get_processor_name(), local=list(local_transport(version)), pid=os.getpid())
    every = allgather_json(comm, mine)
    hosts = [e["host"] for e in every]
    local, remote = every[0]["local"]
    return dict(library=" ".join(version.splitlines()[0].split()), hosts=hosts, same_host=local, across_hosts=remote,
                agree=all(e["local"] == every[0]["local"] for e in every))


def format_transport(info: dict, link_mbit: float | None = None, link_latency_ms: float = 0.0) -> str:
    """The lines prism-run --verbose prints about the transport."""
    hosts = info["hosts"]
    by_host = {}
    for r, h in enumerate(hosts):
        by_host.setdefault(h, []).append(r)
    where = "; ".join(f"{h}: rank{'s' if len(r) > 1 else ''} {','.join(map(str, r))}" for h, r in by_host.items())
    lines = [f"MPI library: {info['library']}",
             f"hosts: {len(by_host)} ({where})",
             "transport (derived from the library name and the environment):"]
    if len(hosts) > len(by_host):
        lines.append(f"  within a host: {info['same_host']}")
    if len(by_host) > 1:
        lines.append(f"  between hosts: {info['across_hosts']}")
        if info["same_host"] == "shared memory":
            lines.append("  note: hosts that share one kernel (containers, network namespaces) may still be joined "
                         "by shared memory; MPIR_CVAR_NOLOCAL=1 forces the network")
    if len(hosts) == 1:
        lines.append("  none (one rank)")
    if not info["agree"]:
        lines.append("warning: the ranks' transport environment differs")
    lines.append("link emulation: " + ("off (the real link)" if link_mbit is None
                                       else f"on, {link_mbit:g} Mbit/s, {link_latency_ms:g} ms (--link-mbit)"))
    return "\n".join(lines)
