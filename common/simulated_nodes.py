"""Node configs for Flower's simulation runtime.

A simulated SuperNode gets only `partition-id` and `num-partitions` from Flower, not the
`site`/`data-path`/`out-dir` a hospital's SuperNode is started with. The launcher writes one
node config per partition to a JSON file named by the run config's `sim-sites`; each
simulated node reads its own entry. Simulation runs where every node sees that file (one
machine, or a Ray cluster on a shared file system); real sites use SuperNodes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

NODE_KEYS = ("site", "data-path", "out-dir")


def write_simulated_nodes(path: Path, nodes: Sequence[Mapping[str, object]]) -> None:
    """One node config per partition id, in partition order."""
    for i, node in enumerate(nodes):
        missing = [k for k in NODE_KEYS if k not in node]
        if missing:
            raise ValueError(f"simulated node {i} lacks {missing}")
    path.write_text(json.dumps({"nodes": [dict(n) for n in nodes]}, indent=2) + "\n")


def node_config(node: Mapping[str, object], run: Mapping[str, object]) -> dict[str, object]:
    """The node config to use: a SuperNode's own, or a simulated node's entry."""
    if "site" in node or "partition-id" not in node:
        return dict(node)
    table = str(run.get("sim-sites", "") or "")
    if not table:
        raise ValueError("simulated node without a site table. Fix: run the simulation with "
                         "`fedcmr federate --runtime simulation` or set the run config's "
                         "sim-sites to a JSON file of node configs")
    path = Path(table)
    try:
        nodes = json.loads(path.read_text())["nodes"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"sim-sites {path}: cannot read the node table ({err}). Fix: point "
                         "sim-sites at the file `fedcmr federate --runtime simulation` "
                         "writes") from err
    partition = int(node["partition-id"])  # type: ignore[arg-type]
    if not 0 <= partition < len(nodes):
        raise ValueError(f"sim-sites {path}: no entry for partition {partition} of "
                         f"{len(nodes)}. Fix: run with num-supernodes={len(nodes)}")
    return {**nodes[partition], "partition-id": partition}
