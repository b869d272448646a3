"""What `prism-run --verbose` says about the transport (`distributed.transport`), from the MPI
library's version string and the environment: no MPI job needed."""

from prism_ops.distributed.transport import format_transport, local_transport

MPICH = "MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25\nMPICH Device:       ch4:ucx ofi\n"


def test_mpich_uses_shared_memory_on_one_host_unless_nolocal():
    assert local_transport(MPICH, {}) == ("shared memory", "netmod ucx (default), UCX's choice of transports "
                                                           "(UCX_TLS unset)")
    env = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "eth0"}
    within, across = local_transport(MPICH, env)
    assert across == "netmod ofi, FI_PROVIDER=tcp, FI_TCP_IFACE=eth0"
    assert within == f"{across} (MPIR_CVAR_NOLOCAL=1)"
    assert local_transport(MPICH, {"MPICH_CH4_NETMOD": "ucx", "UCX_TLS": "tcp"})[1] == "netmod ucx, UCX_TLS=tcp"


def test_open_mpi_and_unknown_libraries():
    assert "pml=ob1" in local_transport("Open MPI v5.0.3", {"OMPI_MCA_pml": "ob1"})[1]
    assert local_transport("Some MPI 1.0", {}) == ("unknown", "unknown")


def test_format_names_hosts_ranks_transport_and_emulation():
    info = dict(library="MPICH Version: 5.0.2", hosts=["a", "a", "b"], same_host="shared memory",
                across_hosts="netmod ofi, FI_PROVIDER=tcp", agree=True)
    text = format_transport(info, link_mbit=10.0, link_latency_ms=2.0)
    assert "hosts: 2 (a: ranks 0,1; b: rank 2)" in text
    assert "within a host: shared memory" in text and "between hosts: netmod ofi, FI_PROVIDER=tcp" in text
    assert "MPIR_CVAR_NOLOCAL=1 forces the network" in text  # hosts on one kernel may still share memory
    assert "link emulation: on, 10 Mbit/s, 2 ms (--link-mbit)" in text
    one = format_transport(dict(info, hosts=["a"], agree=False))
    assert "none (one rank)" in one and "link emulation: off" in one and "warning" in one
