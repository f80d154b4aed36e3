"""Simulated nodes find their hospital's node config by partition id; SuperNodes keep theirs."""

from __future__ import annotations

import pytest

from fedcmr.common.simulated_nodes import node_config, write_simulated_nodes

NODES = [{"site": "Alpha", "data-path": "/data/a", "out-dir": "/out/a", "threads": 1},
         {"site": "Bravo", "data-path": "/data/b", "out-dir": "/out/b", "threads": 1}]


def test_a_supernode_keeps_its_own_config(tmp_path):
    own = {"site": "Hospital", "data-path": "/x", "out-dir": "/y"}
    table = tmp_path / "nodes.json"
    write_simulated_nodes(table, NODES)
    assert node_config(own, {"sim-sites": str(table)}) == own


def test_each_partition_reads_its_entry(tmp_path):
    table = tmp_path / "nodes.json"
    write_simulated_nodes(table, NODES)
    for pid, expected in enumerate(NODES):
        got = node_config({"partition-id": pid, "num-partitions": 2}, {"sim-sites": str(table)})
        assert got == {**expected, "partition-id": pid}


def test_bad_tables_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="--runtime simulation"):
        node_config({"partition-id": 0}, {"sim-sites": ""})
    with pytest.raises(ValueError, match="missing.json.*cannot read"):
        node_config({"partition-id": 0}, {"sim-sites": str(tmp_path / "missing.json")})
    table = tmp_path / "nodes.json"
    write_simulated_nodes(table, NODES)
    with pytest.raises(ValueError, match="no entry for partition 2 of 2.*num-supernodes=2"):
        node_config({"partition-id": 2}, {"sim-sites": str(table)})
    with pytest.raises(ValueError, match="lacks \\['out-dir'\\]"):
        write_simulated_nodes(table, [{"site": "A", "data-path": "/a"}])
