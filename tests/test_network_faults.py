"""A deployment under stress, with real processes: `fedcmr server` and one `fedcmr client`
per hospital. In the same run one hospital is killed (SIGKILL of its client, SuperNode and
ClientApp) and restarted, one hospital's link goes dark for longer than the heartbeat and
comes back (a loopback relay, tests/relay.py), and one hospital answers round 2 later than
the round timeout (a straggler: its SuperNode online, its reply held back by
tests/poison/). The run finishes
with every site, each back in a later round, the straggler's late reply mixed into no
round; then every hospital stops by itself, leaving no Flower process. Every byte Bravo
sends passes the relay and is recorded: none is a subject id or image data (a marker
subject planted in its cache is searched for). The sites train the tests' toy model begun
by the histogram round (tests/toy_model.py, "toy-nyul"): the faults, not the model, are
what is tested; the coordinator waits BEGIN_PAUSE_S between the histogram round, which
every site answers, and round 1, in which the first two faults begin."""

from __future__ import annotations

import csv
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cache_factory import (
    MARKER_IMAGE,
    MARKER_LABELS,
    MARKER_SUBJECT,
    plant_markers,
    write_cohort,
)
from process_tools import (
    audit_kinds,
    hospital,
    kill_tree,
    our_processes,
    poisoned,
    wait_for,
)
from relay import Relay
from traffic import sent_by_site

from fedcmr.common.protocol import FINISHED_MARKER
from fedcmr.support.flower_env import tool
from fedcmr.support.ports import free_port, port_is_free

pytestmark = pytest.mark.slow
SIZES = {"Alpha": (6, 6), "Bravo": (6, 6), "Charlie": (6, 6), "Delta": (6, 6)}
ROUND_TIMEOUT = 25
#: Longer than the SuperLink's heartbeat patience (2 x 10 s, support/flower_patches.py
#: prompt_heartbeat) and shorter than ROUND_TIMEOUT past it: the node goes offline, and it
#: is its missed heartbeats (not a round's timeout) that name it lost.
DARK_SECONDS = 30
BEGIN_PAUSE_S = 10
ENV = {**poisoned("Charlie=none,stall", ROUND_TIMEOUT + 5),
       "TOY_BEGIN_PAUSE_S": str(BEGIN_PAUSE_S)}


def client(site: str, cache: Path, superlink: str, out: Path, log: Path) -> subprocess.Popen:
    return hospital(site, cache, superlink, out, "--max-wait-time", "300", log=log, env=ENV)


def test_kill_and_restart_a_cut_link_and_a_straggler_in_one_run(tmp_path):
    caches = dict(zip(SIZES, write_cohort(tmp_path / "caches", SIZES), strict=True))
    plant_markers(caches["Bravo"], "BRA004")
    run_dir, port = tmp_path / "run", free_port()
    server = subprocess.Popen(
        [tool("fedcmr"), "-q", "server", "--sites", "4", "--host", "127.0.0.1", "--port",
         str(port), "--profile", "smoke", "--model", "toy-nyul", "--fold", "0", "--epochs", "6",
         "--min-subjects", "3", "--round-timeout", str(ROUND_TIMEOUT), "--rejoin-timeout",
         "240", "--out", str(run_dir), "--insecure"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
        start_new_session=True)
    relay = Relay(port, record=tmp_path / "bravo-sent")
    logs = tmp_path / "logs"
    logs.mkdir()
    address = {s: f"127.0.0.1:{relay.port if s == 'Bravo' else port}" for s in SIZES}
    clients = {s: client(s, caches[s], address[s], tmp_path / s, logs / f"{s}.log")
               for s in SIZES}
    restarted = None
    try:
        # the faults start with round 1, once every site has sent its histogram
        wait_for(lambda: all("query.nyul" in audit_kinds(tmp_path / s) for s in SIZES), 600,
                 "the histogram round", server)
        time.sleep(3)  # their replies reach the SuperLink (round 1: BEGIN_PAUSE_S later)
        kill_tree(clients["Delta"].pid)
        relay.blackhole()
        restore = threading.Timer(DARK_SECONDS, relay.restore)
        restore.start()
        clients["Delta"].wait()
        # Delta is back once round 1 has been sent (before, it would have joined round 1)
        wait_for(lambda: "train" in audit_kinds(tmp_path / "Alpha"), 120, "round 1", server)
        restarted = client("Delta", caches["Delta"], address["Delta"], tmp_path / "Delta",
                           logs / "Delta-restarted.log")
        # round 2: Charlie's reply comes ROUND_TIMEOUT + 5 s late (FEDCMR_TEST_POISON)
        out, _ = server.communicate(timeout=1200)
        restore.join()
        assert server.returncode == 0, out[-4000:]
        assert "run over: told 4 site(s)" in out, out[-3000:]
        # every hospital stops by itself (exit 0, no signal) once the run is over
        for site, proc in {**clients, "Delta": restarted}.items():
            assert proc.wait(timeout=120) == 0, (site, (logs / f"{site}.log").read_text()[-2000:])
    finally:
        relay.close()
        for proc in (server, *clients.values(), *([restarted] if restarted else [])):
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["sites"]["covered"] == sorted(SIZES) and metrics["sites"]["lost"] == {}
    with (run_dir / "rounds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    took_part = {s: sorted(int(r["round"]) for r in rows if r["site"] == s) for s in SIZES}
    last = max(max(v) for v in took_part.values())
    for site in ("Bravo", "Delta"):  # away in round 1, back later
        assert 1 not in took_part[site] and took_part[site], (site, took_part)
    missed = [r for r in range(2, last + 1) if r not in took_part["Charlie"]]
    assert missed, took_part  # the straggler missed a round...
    assert any(r > missed[0] for r in took_part["Charlie"]), took_part  # ...then came back
    events = [json.loads(line) for line in
              (run_dir / "site_events.jsonl").read_text().splitlines()]
    for site in ("Bravo", "Charlie", "Delta"):
        assert [e["event"] for e in events if e["site"] == site][:2] == ["lost", "rejoined"]
    straggled = next(e for e in events if e["site"] == "Charlie" and e["event"] == "lost")
    assert f"no reply to train within {ROUND_TIMEOUT} s" in straggled["reason"]
    dark = next(e for e in events if e["site"] == "Bravo" and e["event"] == "lost")
    assert "heartbeat" in dark["reason"], dark  # missed heartbeats, before the round's timeout
    audit = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    for row in audit:  # the audit trail lists exactly the rows of rounds.csv
        assert sorted(c["site"] for c in row["contributed"]) == sorted(
            s for s, rounds in took_part.items() if row["round"] in rounds)
    for site in SIZES:
        log = "Delta-restarted" if site == "Delta" else site
        last = [line for line in (logs / f"{log}.log").read_text().splitlines() if line][-1]
        assert "the coordinator's run is over" in last, (site, last)
        assert (tmp_path / site / FINISHED_MARKER).exists()
        assert list((tmp_path / site).glob("fold_0/predictions.csv")), site
    assert our_processes(tmp_path) == []  # no SuperNode, SuperExec or ClientApp left
    assert port_is_free(port)

    assert_no_subject_data_left(tmp_path / "bravo-sent", caches["Bravo"],
                                updates=len(took_part["Bravo"]))


def assert_no_subject_data_left(recorded: Path, cache: Path, updates: int) -> None:
    """Bravo's traffic (HTTP/2 streams reassembled) holds its name and model updates, and
    no subject id, no run of the planted image values (float32, any 4 in a row), no run of
    its planted labels."""
    from fedcmr.common.cache_format import read_manifest

    sent = sent_by_site(recorded)
    # the search finds what is there: its name, each model update it sent (a packed record)
    assert any(b"Bravo" in chunk for chunk in sent)
    assert sum(b"packed-arrays" in chunk for chunk in sent) >= updates >= 1
    subjects = sorted({e.subject for e in read_manifest(cache)})
    assert MARKER_SUBJECT in subjects
    image, labels = MARKER_IMAGE.tobytes(), MARKER_LABELS.tobytes()
    markers = [*(s.encode() for s in subjects),
               *(image[i:i + 16] for i in range(0, len(image) - 12, 4)),
               *(labels[i:i + 12] for i in range(len(labels) - 11))]
    found = [m for m in markers if any(m in chunk for chunk in sent)]
    assert not found, found
