"""A hospital node's configuration: which site it is, where its data and private outputs are.

A SuperNode is started with it as `--node-config` (`NodeConfig.to_text`). A node of Flower's
simulation runtime gets only `partition-id` and `num-partitions`, so the launcher writes one
NodeConfig per partition to a JSON table named by the run config's `sim-sites`, and each
simulated node reads its own entry. Simulation runs where every node sees that file (one
machine, or a Ray cluster on a shared file system); real sites use SuperNodes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedcmr.common.atomic import write_json

#: The run-config key that names the simulated-node table.
SIM_SITES = "sim-sites"


class NodeConfig(BaseModel):
    """Keys as Flower's node config spells them: site, data-path, out-dir, threads,
    policy, centres."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True,
                              alias_generator=lambda name: name.replace("_", "-"))

    #: The hospital's display name.
    site: str
    #: Its prepared cache folder(s); comma-separated in Flower's node config.
    data_path: tuple[Path, ...] = Field(min_length=1)
    #: Its private output folder (per-subject predictions, the audit log).
    out_dir: Path
    #: CPU threads for torch (0: torch's default).
    threads: int = Field(0, ge=0)
    #: The hospital's release policy file (client/site/policy.py); None: its defaults.
    policy: Path | None = None
    #: The centres of its caches it serves (empty: all); comma-separated in Flower's node
    #: config. The local launcher gives each centre of a multi-centre cache its own site.
    centres: tuple[str, ...] = ()
    #: The site's own state folder (its release ledger), fixed whatever the out-dir;
    #: None: the out-dir (the one-machine launchers).
    state_dir: Path | None = None

    @field_validator("policy", "state_dir", mode="before")
    @classmethod
    def _no_policy(cls, value: object) -> object:
        return value or None

    @field_validator("data_path", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(Path(p) for p in value.split(",") if p)
        return value

    @field_validator("centres", mode="before")
    @classmethod
    def _split_centres(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(c for c in value.split(",") if c)
        return value

    @field_validator("centres")
    @classmethod
    def _no_comma(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in value if "," in c or not c.strip()]
        if bad:
            raise ValueError(f"centre name(s) {bad} cannot be served by name (empty, or a "
                             "comma, which separates centres). Fix: rename the centre when "
                             "preparing its cache")
        return value

    def to_flower(self) -> dict[str, str | int]:
        """The node-config mapping (plain strings and ints, as Flower holds it)."""
        return {"site": self.site, "data-path": ",".join(str(p) for p in self.data_path),
                "out-dir": str(self.out_dir), "threads": self.threads,
                "policy": str(self.policy or ""), "centres": ",".join(self.centres),
                "state-dir": str(self.state_dir or "")}

    def to_text(self) -> str:
        """The `--node-config` argument of `flower-supernode`."""
        return " ".join(f"{k}={json.dumps(v)}" for k, v in self.to_flower().items())

    @classmethod
    def resolve(cls, node: Mapping[str, object], run: Mapping[str, object]) -> NodeConfig:
        """The node's own config, or a simulated node's entry in the `sim-sites` table; a
        clear error names what is missing and the fix."""
        values = _table_entry(node, run) if _is_simulated(node) else dict(node)
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            missing = [str(e["loc"][0]) for e in err.errors() if e["type"] == "missing"]
            what = f"lacks {missing}" if missing else f"is invalid ({err.errors()[0]['msg']})"
            raise ValueError(f"SuperNode --node-config {what}. Fix: start it with "
                             "--node-config 'site=\"NAME\" data-path=\"CACHE\" "
                             "out-dir=\"DIR\"'") from None

    @classmethod
    def out_dir_of(cls, node: Mapping[str, object], run: Mapping[str, object]) -> Path | None:
        """Just the private output folder, where one is configured (for the audit gate,
        which must log even when the rest of the config is broken)."""
        values = _table_entry(node, run) if _is_simulated(node) else dict(node)
        out = values.get("out-dir")
        return Path(str(out)) if out else None


def _is_simulated(node: Mapping[str, object]) -> bool:
    return "site" not in node and "partition-id" in node


def write_simulated_nodes(path: Path, nodes: Sequence[NodeConfig]) -> None:
    """One node config per partition id, in partition order."""
    write_json(path, {"nodes": [n.to_flower() for n in nodes]})


def _table_entry(node: Mapping[str, object], run: Mapping[str, object]) -> dict[str, object]:
    table = str(run.get(SIM_SITES, "") or "")
    if not table:
        raise ValueError("simulated node without a site table. Fix: run the simulation with "
                         "`fedcmr federate --runtime simulation` or set the run config's "
                         f"{SIM_SITES} to a JSON file of node configs")
    path = Path(table)
    try:
        nodes = json.loads(path.read_text())["nodes"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{SIM_SITES} {path}: cannot read the node table ({err}). Fix: point "
                         f"{SIM_SITES} at the file `fedcmr federate --runtime simulation` "
                         "writes") from err
    partition = int(node["partition-id"])  # type: ignore[arg-type]
    if not 0 <= partition < len(nodes):
        raise ValueError(f"{SIM_SITES} {path}: no entry for partition {partition} of "
                         f"{len(nodes)}. Fix: run with num-supernodes={len(nodes)}")
    return {**nodes[partition], "partition-id": partition}
