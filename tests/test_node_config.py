"""A node's config: SuperNodes keep their own, simulated nodes find theirs by partition id,
and a broken config says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcmr.common.node_config import NodeConfig, write_simulated_nodes

NODES = [NodeConfig(site="Alpha", data_path=(Path("/data/a"),), out_dir=Path("/out/a"),
                    threads=1),
         NodeConfig(site="Bravo", data_path=(Path("/data/b"), Path("/data/c")),
                    out_dir=Path("/out/b"), threads=1, centres=("Bravo", "Vall d'Hebron"))]


def test_a_supernode_keeps_its_own_config(tmp_path):
    own = {"site": "Hospital", "data-path": "/x,/z", "out-dir": "/y"}
    table = tmp_path / "nodes.json"
    write_simulated_nodes(table, NODES)
    node = NodeConfig.resolve(own, {"sim-sites": str(table)})
    assert (node.site, node.data_path, node.out_dir) == ("Hospital", (Path("/x"), Path("/z")),
                                                         Path("/y"))


def test_each_partition_reads_its_entry(tmp_path):
    table = tmp_path / "nodes.json"
    write_simulated_nodes(table, NODES)
    for pid, expected in enumerate(NODES):
        got = NodeConfig.resolve({"partition-id": pid, "num-partitions": 2},
                                 {"sim-sites": str(table)})
        assert got == expected


def test_the_supernode_argument_round_trips_through_flowers_parser():
    from flwr.common.config import parse_config_args

    node = NodeConfig(site="Vall d'Hebron", data_path=(Path("/a b/c"),), out_dir=Path("/o"))
    assert NodeConfig.resolve(parse_config_args([node.to_text()]), {}) == node
    # a site serving some centres of a shared cache (names with spaces and apostrophes)
    some = node.model_copy(update={"centres": ("Vall d'Hebron", "Sant Pau")})
    parsed = parse_config_args([some.to_text()])
    assert parsed["centres"] == "Vall d'Hebron,Sant Pau"
    assert NodeConfig.resolve(parsed, {}).centres == ("Vall d'Hebron", "Sant Pau")


def test_the_centre_filter_defaults_to_all_and_refuses_commas():
    old = NodeConfig.resolve({"site": "A", "data-path": "/a", "out-dir": "/o"}, {})
    assert old.centres == ()  # a config written before the filter: every centre
    assert NodeConfig.resolve(old.to_flower(), {}).centres == ()
    with pytest.raises(ValueError, match="comma"):
        NodeConfig(site="A", data_path=(Path("/a"),), out_dir=Path("/o"), centres=("x,y",))


def test_bad_configs_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="--runtime simulation"):
        NodeConfig.resolve({"partition-id": 0}, {"sim-sites": ""})
    with pytest.raises(ValueError, match="missing.json.*cannot read"):
        NodeConfig.resolve({"partition-id": 0}, {"sim-sites": str(tmp_path / "missing.json")})
    table = tmp_path / "nodes.json"
    write_simulated_nodes(table, NODES)
    with pytest.raises(ValueError, match="no entry for partition 2 of 2.*num-supernodes=2"):
        NodeConfig.resolve({"partition-id": 2}, {"sim-sites": str(table)})
    with pytest.raises(ValueError, match="lacks \\['out-dir'\\].*--node-config"):
        NodeConfig.resolve({"site": "A", "data-path": "/a"}, {})
