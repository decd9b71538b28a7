"""The ports tests hand to the servers they start: each worker's own, out of the kernel's way."""

from __future__ import annotations

import itertools
import socket

import pytest

from mesh.policy import load_policy
from tests.ports import BANDS_START, MESH_LAYOUT, Band, free_ports, worker_band


def test_each_worker_has_a_band_of_its_own_below_the_ephemeral_range() -> None:
    bands = [worker_band(f"gw{index}", "4", 32_768) for index in range(4)]

    assert all(band is not None for band in bands)
    assert bands[0] is not None and bands[0].start == BANDS_START
    assert bands[-1] is not None and bands[-1].stop <= 32_768
    for first, second in itertools.pairwise(bands):
        assert first is not None and second is not None
        assert first.stop <= second.start


def test_a_run_without_workers_takes_the_whole_band() -> None:
    assert worker_band(None, None, 32_768) == range(BANDS_START, 32_768)


def test_with_no_room_below_the_ephemeral_range_the_kernel_picks() -> None:
    assert worker_band("gw0", "2", 11_000) is None


def test_a_port_in_use_is_passed_over_and_a_band_with_none_free_says_so() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]

        with pytest.raises(RuntimeError, match=f"^no 1 free ports left in {taken}-{taken}$"):
            Band(range(taken, taken + 1)).pick(1)


def test_a_band_passes_over_its_reserved_ports() -> None:
    (port,) = free_ports(1)
    band = Band(range(port - 1, port + 2), reserved=frozenset({port - 1, port + 1}))

    assert band.pick(1) == [port]


def test_the_bands_reserve_the_ports_the_mesh_launcher_test_binds() -> None:
    # It binds the layout's fixed ports (mesh/policy.yaml) while the other worker picks from its band.
    local = load_policy().local
    fixed = {local.edge.port, local.edge.admin, *(instance.inbound for instance in local.instances.values())}

    assert fixed <= MESH_LAYOUT


def test_the_suite_s_ports_are_free_and_distinct() -> None:
    ports = free_ports(20)

    assert len(set(ports)) == 20
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
