"""Where a federated round's time goes: the same federation (four sites, full-size r3d_18
weights: 33 M parameters, 133 MB in fp32; the paper's 7 local steps per round) on the
deployment runtime as Flower runs it (a fresh ClientApp process per message), with
fedcmr's forked ClientApps, and on the simulation runtime.

    python benchmarks/round_overhead.py [--modes exec,fork,simulation] [--rounds 3]
                                        [--fit-rounds 6]
                                        [--update-encoding fp32|fp16-delta]
                                        [--caches DIR ...] [--out FILE]

The input is the smoke profile's 4 x 24 x 24 crop, so that compute is small and the
overhead shows; the weights that travel are the full model's whatever the input. With
$FEDCMR_TIMINGS set, the coordinator, each SuperNode and each ClientApp note their side of
every message on their own clocks (support/exchange_timing.py, support/flower_patches.py
`trace_supernode`); joined on the message id, each exchange splits into parts that add up
to it, each the difference of times read by two processes:

  to supernode        coordinator's push -> the message's head reached the SuperNode:
                      the coordinator's upload of the head, the SuperNode's poll
  supernode download  -> the message stored whole at the SuperNode (its arrays)
  clientapp start     -> the message inside the ClientApp: the SuperExec waking, the fork,
                      the ClientApp's pull from the SuperNode, unpacking, the audit gate
  in clientapp        the ClientApp's own time around the work, inside its mods
  compute             the handler's own work (training, scoring)
  reply to supernode  the ClientApp's reply -> found ready at the SuperNode (packing, the
                      audit gate, the ClientApp's upload to its SuperNode)
  supernode upload    -> pushed to the SuperLink
  to coordinator      -> pulled by the coordinator (its poll, its download)

`coordinator_upload` (push started -> push returned, all sites' messages at once) is given
beside them. Without a SuperNode trace (exec mode) the older three-part split is used:
to_site, clientapp_start (process start to import), back.

Simulation has no processes per message: only its total and compute are split. The
in-process runtime (a study's cells) serves the sites in turn, so a message's own time
includes its turn: there each exchange (the messages pushed together) is one row, its time
from the push to the last reply, `beyond_compute` that less the sites' compute summed.
`outside_exchanges_s`, per mode, is the run's time outside any exchange: starting and
stopping it, the server's work between rounds (screening and aggregating the replies, the
checkpoint) and writing the results: a cell's fixed cost. In-process, the apps are imported
before the clock starts, as in a study's process after its first cell.

--fit-rounds N runs the in-process mode again with N rounds and fits the run's time beyond
its sites' compute (elapsed less every handler's time; the sites run in turn) as a fixed
cost per cell plus a cost per round (its train exchange and the server's screening,
aggregation and checkpoint): `in_process_fit`, what benchmarks/study_cost.py charges.
Prints a table; writes benchmarks/results/round_overhead.json. Run it alone: on 2 cores
anything else running changes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedcmr.common.atomic import write_json
from fedcmr.common.run_config import RunConfig
from fedcmr.server.settings import FederationSettings
from fedcmr.support.exchange_timing import TIMINGS_ENV

RESULTS = Path(__file__).resolve().parent / "results" / "round_overhead.json"
REPO = Path(__file__).resolve().parent.parent
#: What each mode sets (and what it unsets) in the environment the processes inherit.
MODES = {
    "exec": {"FEDCMR_CLIENTAPP_START": "exec"},
    "fork": {"FEDCMR_CLIENTAPP_START": "fork"},
    "simulation": {},
    "in-process": {},
}
#: Messages pushed within this many seconds of each other belong to one exchange.
SAME_EXCHANGE_S = 0.5
#: The parts without a SuperNode trace (exec mode: Flower's own SuperExec).
UNTRACED_PARTS = ("to_site", "back")
PARTS = ("to_supernode", "supernode_download", "clientapp_start", "in_clientapp", "compute",
         "reply_to_supernode", "supernode_upload", "to_coordinator")
SIZES = {"Alpha": (6, 6), "Bravo": (7, 7), "Charlie": (5, 6), "Delta": (6, 7)}


def make_caches(root: Path) -> list[Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from cache_factory import write_cohort  # the tests' ring-frame caches

    return write_cohort(root, SIZES)


def read_rows(folder: Path, side: str) -> dict[str, dict]:
    rows = {}
    for path in folder.glob(f"{side}-*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[row["message_id"]] = row
    return rows


def split(server: dict, site: dict | None, node: dict | None, simulated: bool
          ) -> dict[str, float] | None:
    """One exchange in parts, each the difference of two times read by two processes (the
    coordinator, the site's SuperNode, its ClientApp) where the SuperNode's trace is there;
    the parts add up to the whole exchange."""
    if server["replied"] is None:
        return None
    total = server["replied"] - server["pushed"]
    out = {"total": total}
    if server.get("push_done") is not None:
        out["coordinator_upload"] = server["push_done"] - server["pushed"]
    if site is None:
        return out
    out["compute"] = site["handler_s"]
    if simulated:
        return out
    if node is None or "stored" not in node or "pushed" not in node:  # no SuperNode trace
        started = site["process_started"] or site["imported"]
        out.update(to_site=started - server["pushed"],
                   clientapp_start=site["imported"] - started,
                   in_clientapp=site["left"] - site["imported"] - site["handler_s"],
                   back=server["replied"] - site["left"])
        return out
    out.update(in_clientapp=site["left"] - site["entered"] - site["handler_s"],
               to_supernode=node["pulled"] - server["pushed"],
               supernode_download=node["stored"] - node["pulled"],
               clientapp_start=site["entered"] - node["stored"],
               reply_to_supernode=node["reply_ready"] - site["left"],
               supernode_upload=node["pushed"] - node["reply_ready"],
               to_coordinator=server["replied"] - node["pushed"])
    return out


def read_nodes(folder: Path) -> dict[str, dict]:
    """The SuperNodes' rows, the two events of each message in one row."""
    rows: dict[str, dict] = {}
    for path in folder.glob("supernode-*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows.setdefault(row.pop("message_id"), {}).update(
                {k: v for k, v in row.items() if k != "event"})
    return rows


def summarise(folder: Path, simulated: bool) -> dict:
    servers, sites = read_rows(folder, "server"), read_rows(folder, "site")
    nodes = read_nodes(folder)
    by_type: dict[str, list[dict]] = {}
    bytes_seen: dict[str, list[int]] = {}
    for mid, server in servers.items():
        parts = split(server, sites.get(mid), nodes.get(mid), simulated)
        if parts is not None:
            by_type.setdefault(server["type"], []).append(parts)
            bytes_seen.setdefault(server["type"], []).append(
                server["bytes_out"] + (server["bytes_back"] or 0))
    out = {}
    for kind, rows in sorted(by_type.items()):
        keys = [k for k in ("total", "coordinator_upload", *PARTS, *UNTRACED_PARTS)
                if all(k in r for r in rows)]
        means = {k: round(statistics.fmean(r[k] for r in rows), 3) for k in keys}
        if "compute" in means:
            means["beyond_compute"] = round(means["total"] - means["compute"], 3)
        out[kind] = {"exchanges": len(rows), "mean_s": means,
                     "bytes_per_exchange": round(statistics.fmean(bytes_seen[kind]))}
    return out


def exchanges_in_turn(folder: Path) -> tuple[dict, float]:
    """The in-process runtime: per message type, each exchange's time (first push to last
    reply) and compute (its sites' handlers, summed: they run in turn); and the sum of every
    exchange's time."""
    servers, sites = read_rows(folder, "server"), read_rows(folder, "site")
    rows = sorted((r["pushed"], r["replied"], r["type"], mid) for mid, r in servers.items()
                  if r["replied"] is not None)
    groups: list[list] = []
    for row in rows:
        if groups and row[0] - groups[-1][0][0] < SAME_EXCHANGE_S and row[2] == groups[-1][0][2]:
            groups[-1].append(row)
        else:
            groups.append([row])
    by_type: dict[str, list[dict]] = {}
    for group in groups:
        total = max(r[1] for r in group) - group[0][0]
        compute = sum(sites[r[3]]["handler_s"] for r in group if r[3] in sites)
        by_type.setdefault(group[0][2], []).append({"total": total, "compute": compute})
    out = {kind: {"exchanges": len(found), "sites": len(groups[0]) if groups else 0,
                  "mean_s": {k: round(statistics.fmean(r[k] for r in found), 3)
                             for k in ("total", "compute")}}
           for kind, found in sorted(by_type.items())}
    for kind in out.values():
        kind["mean_s"]["beyond_compute"] = round(kind["mean_s"]["total"]
                                                 - kind["mean_s"]["compute"], 3)
    return out, sum(max(r[1] for r in g) - g[0][0] for g in groups)


def exchanges_time(folder: Path) -> float:
    """Seconds during which some exchange was under way (their union)."""
    spans = sorted((r["pushed"], r["replied"]) for r in read_rows(folder, "server").values()
                   if r["replied"] is not None)
    busy, end = 0.0, float("-inf")
    for start, stop in spans:
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return busy


def beyond_compute(result: dict) -> tuple[float, int]:
    """An in-process run's seconds beyond its sites' compute, and its exchanges."""
    kinds = result["exchanges"].values()
    compute = sum(k["mean_s"]["compute"] * k["exchanges"] for k in kinds)
    return result["elapsed_s"] - compute, sum(k["exchanges"] for k in kinds)


def fit(short: dict, long: dict, rounds: tuple[int, int]) -> dict:
    """Fixed cost per run and cost per round from two in-process runs of `rounds` rounds (a
    line through their time beyond compute against their rounds): a round is a train
    exchange plus the server's screening, aggregation and checkpoint."""
    (o1, n1), (o2, n2) = beyond_compute(short), beyond_compute(long)
    per_round = (o2 - o1) / (rounds[1] - rounds[0])
    return {"runs": [{"rounds": rounds[0], "exchanges": n1, "beyond_compute_s": round(o1, 2)},
                     {"rounds": rounds[1], "exchanges": n2, "beyond_compute_s": round(o2, 2)}],
            "per_round_s": round(per_round, 3),
            "fixed_per_run_s": round(o1 - per_round * rounds[0], 2)}


def run_mode(mode: str, caches: list[Path], root: Path, rounds: int,
             encoding: str = "fp32") -> dict:
    from fedcmr.lab.local_federation import run_local_federation

    timings = root / f"{mode}-timings"
    saved = {k: os.environ.get(k) for k in (*MODES["fork"], TIMINGS_ENV)}
    os.environ.update({**MODES[mode], TIMINGS_ENV: str(timings)})
    run = RunConfig(profile="smoke", folds=(0,), min_subjects=3, epochs=rounds,
                    pretrained="none", update_encoding=encoding)
    settings = FederationSettings(strategy="fedavg", round_timeout=900, run=run)
    runtime = mode if mode in ("simulation", "in-process") else "deployment"
    if mode == "in-process":  # what a study's process has imported after its first cell
        import fedcmr.client.site.client_app  # noqa: F401
        import fedcmr.server.server_app  # noqa: F401
        import fedcmr.support.inprocess_simulation  # noqa: F401
    started = time.monotonic()
    try:
        metrics = run_local_federation(caches, settings, root / mode, echo=lambda _: None,
                                       runtime=runtime)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    elapsed = time.monotonic() - started
    if mode == "in-process":
        exchanges, busy = exchanges_in_turn(timings)
    else:
        exchanges, busy = summarise(timings, mode == "simulation"), exchanges_time(timings)
    return {"elapsed_s": round(elapsed, 1), "auc_total": metrics["auc"]["total"],
            "outside_exchanges_s": round(elapsed - busy, 1), "exchanges": exchanges}


def table(results: dict) -> str:
    lines = [f"{'mode':<11} {'run s':>7} {'outside':>7} {'train exch s':>12} {'compute':>8} "
             f"{'beyond':>7}  "
             + " ".join(f"{p:>13}" for p in PARTS if p != "compute")]
    for mode, res in results["modes"].items():
        train = res["exchanges"].get("train", {}).get("mean_s", {})
        lines.append(f"{mode:<11} {res['elapsed_s']:>7.1f} "
                     f"{res.get('outside_exchanges_s', 0):>7.1f} {train.get('total', 0):>12.2f} "
                     f"{train.get('compute', 0):>8.2f} {train.get('beyond_compute', 0):>7.2f}  "
                     + " ".join(f"{train[p]:>13.2f}" if p in train else f"{'-':>13}"
                                for p in PARTS if p != "compute"))
    for mode, ratio in results.get("ratio_to_simulation", {}).items():
        lines.append(f"{mode}: {ratio:.2f}x the simulation runtime's time")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="exec,fork,simulation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fit-rounds", type=int, default=0)
    parser.add_argument("--caches", nargs="*", type=Path)
    parser.add_argument("--update-encoding", default="fp32", choices=("fp32", "fp16-delta"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    with tempfile.TemporaryDirectory(prefix="round-overhead-") as tmp:
        root = Path(tmp)
        caches = args.caches or make_caches(root / "caches")
        results: dict = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                     "load_before": os.getloadavg()[0]},
                         "sites": len(caches), "rounds": args.rounds, "profile": "smoke",
                         "update_encoding": args.update_encoding,
                         "modes": {}}
        for mode in modes:
            print(f"-- {mode} ...", flush=True)
            results["modes"][mode] = run_mode(mode, caches, root, args.rounds,
                                              args.update_encoding)
            print(json.dumps(results["modes"][mode]["exchanges"].get("train", {})), flush=True)
        if args.fit_rounds and "in-process" in results["modes"]:
            print(f"-- in-process, {args.fit_rounds} rounds ...", flush=True)
            longer = run_mode("in-process", caches, root / "fit", args.fit_rounds,
                              args.update_encoding)
            results["in_process_fit"] = fit(results["modes"]["in-process"], longer,
                                            (args.rounds, args.fit_rounds))
            print(json.dumps(results["in_process_fit"]), flush=True)
    sim = results["modes"].get("simulation")
    if sim:
        results["ratio_to_simulation"] = {m: round(r["elapsed_s"] / sim["elapsed_s"], 2)
                                          for m, r in results["modes"].items()
                                          if m != "simulation"}
    write_json(args.out, results)
    print(table(results))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
