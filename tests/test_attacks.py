"""Attacks on the hospital's line (issue #27), each against the real site code with the
default policy, asserting that it fails, and against the defence switched off, asserting
that it succeeds (so that each test can fail). docs/security.md lists them with what is
not defended yet.

Here: split parameters chosen by the coordinator (a validation subset of its choosing
under leave-centre-out), a coordinator in plaintext, and keys (made at the site, 0600). The
audit gate's digests and malformed orders: tests/test_audit.py; keys made at the site
registered and used over TLS with node authentication: tests/test_federation.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cache_factory import write_site_cache
from process_tools import ENV, kill_tree, server_command, wait_for
from pydantic import ValidationError

from fedcmr.client.commands import security_args
from fedcmr.client.site import work as site_work
from fedcmr.client.site.keys import KeyExists, key_paths, make_site_keys
from fedcmr.client.site.ledger import LedgerError, digest_path
from fedcmr.client.site.policy import PolicyRefusal, SitePolicy
from fedcmr.common.model import build_model
from fedcmr.common.protocol import Order
from fedcmr.common.run_config import RunConfig
from fedcmr.support.flower_env import flower_env, tool

REPO = Path(__file__).resolve().parent.parent
#: Vall d'Hebron's size (Table 1: 21 NOR, 25 HCM), the site of the measured attack.
VALL_D_HEBRON = (21, 25)
CENTRES = ("Other", "Vall d'Hebron")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("vall")
    return write_site_cache(root / "cache", "Vall d'Hebron", *VALL_D_HEBRON, seed=5)


@pytest.fixture(scope="module")
def state():
    return build_model("none", seed=0, quiet=True)[0].state_dict()


def lco(n_folds_ccv: int) -> Order:
    """Leave-centre-out, fold 0 (the centre "Other" held out: the site trains)."""
    run = RunConfig(protocol="lco", profile="smoke", centres=CENTRES, n_folds_ccv=n_folds_ccv)
    return Order(run=run, fold=0)


CHECK_SPLITS = SitePolicy.check_splits


def ccv_only(policy: SitePolicy, run: RunConfig) -> None:
    """The check before #27: split parameters checked under CCV only."""
    if run.protocol == "ccv":
        CHECK_SPLITS(policy, run)


def val_subjects(site: site_work.Site, order: Order) -> frozenset[str]:
    return frozenset(f.subject for f in site.parts(order)["val"])


def test_split_parameters_are_checked_under_every_protocol(cache, state, tmp_path,
                                                           monkeypatch):
    """Attack: an LCO request with a CCV fold count of the coordinator's choosing, which
    cuts the validation split from other blocks: a validation subset the site has not
    released, scored under the same model (one of the sets #27 intersected). The default
    policy refuses it by rule; n_folds_ccv <= 1 is no run at all."""
    site = site_work.Site.open("Vall d'Hebron", [cache], tmp_path / "on", SitePolicy())
    usual = site_work.validate(site, lco(5), state)
    assert usual.withheld is None and usual.val.examples > 0
    with pytest.raises(PolicyRefusal, match=r"\(ccv_folds\): 21 CCV folds asked"):
        site_work.validate(site, lco(21), state)
    reply = site_work.histogram_summary(site, lco(21))
    assert reply.summary is None and reply.refused.rule == "ccv_folds"
    for bad in (0, 1, -3):
        with pytest.raises(ValidationError, match="n_folds_ccv"):
            RunConfig(protocol="lco", n_folds_ccv=bad)
    # the split check off: the intersection guard still withholds the new subset's counts
    monkeypatch.setattr(SitePolicy, "check_splits", ccv_only)
    guarded = site_work.Site.open("Vall d'Hebron", [cache], tmp_path / "guarded",
                                  SitePolicy())
    site_work.validate(guarded, lco(5), state)
    assert site_work.validate(guarded, lco(21), state).withheld.rule == "min_difference"
    # both off: the same request releases counts over a new validation subset
    off = site_work.Site.open("Vall d'Hebron", [cache], tmp_path / "off",
                              SitePolicy(min_difference=1))
    site_work.validate(off, lco(5), state)
    crafted = site_work.validate(off, lco(21), state)
    assert crafted.withheld is None and crafted.val.examples > 0
    assert val_subjects(off, lco(21)) != val_subjects(off, lco(5))


# -- keys and plaintext ------------------------------------------------------------------
def fedcmr(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("fedcmr"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_a_coordinator_in_plaintext_must_be_asked_for(tmp_path):
    """Without --secure, `fedcmr server` used to serve in plaintext, admitting any node, and
    say nothing. Now it refuses to start unless the operator says --insecure."""
    done = fedcmr("server", "--sites", "1", "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "needs --secure CERT_DIR" in done.stderr and "--insecure" in done.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    both = fedcmr("server", "--sites", "1", "--out", str(tmp_path / "run"), "--insecure",
                  "--secure", str(tmp_path))
    assert both.returncode == 2 and "contradict" in both.stderr


def test_a_site_makes_its_own_keys_and_refuses_a_key_others_can_read(cache, tmp_path):
    """The hospital's private key is made at the site with mode 0600 and is never
    overwritten; its public key is what Flower's `flwr supernode register` reads; a
    private key others can read is refused by `fedcmr client` (the defence off: with the
    check removed the same key passes)."""
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    made = fedcmr("keygen", "--site", "Vall d'Hebron", "--out", str(tmp_path / "keys"))
    assert made.returncode == 0, made.stderr
    private, public = key_paths("Vall d'Hebron", tmp_path / "keys")
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o644
    key = load_ssh_private_key(private.read_bytes(), password=None)  # as flower-supernode
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == \
        key.public_key().public_numbers()  # as flwr supernode register
    before = private.read_bytes()
    assert fedcmr("keygen", "--site", "Vall d'Hebron", "--out",
                  str(tmp_path / "keys")).returncode == 2
    assert private.read_bytes() == before
    with pytest.raises(KeyExists):
        make_site_keys("Vall d'Hebron", tmp_path / "keys")
    private.chmod(0o644)
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked before the key")
    with pytest.raises(ValueError, match="readable by others .*chmod 600"):
        security_args(ca, private)
    client = fedcmr("client", "--site", "Vall d'Hebron", "--data", str(cache),
                    "--superlink", "127.0.0.1:1", "--root-certificates", str(ca),
                    "--auth-key", str(private), "--out", str(tmp_path / "out"))
    assert client.returncode == 2 and "chmod 600" in client.stderr
    private.chmod(0o600)
    assert "--auth-supernode-private-key" in security_args(ca, private)


# -- the ledger does not move with --out -------------------------------------------------
def one_apart(site: site_work.Site) -> tuple[list[str], list[str]]:
    subjects = sorted({f.subject for f in site.frames})
    return subjects[:20], subjects[:19] + subjects[20:21]


def test_a_site_restarted_with_another_out_still_remembers_what_it_released(cache,
                                                                            tmp_path):
    """Attack: a set one subject apart from a released one is refused; the site is then
    restarted with another --out. Its ledger lives in its state folder, so the set is
    still refused; with the ledger in the out-dir (the defence off) it is released."""
    state = tmp_path / "state"
    first = site_work.Site.open("Vall d'Hebron", [cache], tmp_path / "out-1", SitePolicy(),
                                state_dir=state)
    released, swapped = one_apart(first)
    first.ledger.release("train", released, "fold 0 model update")
    with pytest.raises(PolicyRefusal, match="min_difference"):
        first.ledger.release("train", swapped, "fold 1 model update")
    again = site_work.Site.open("Vall d'Hebron", [cache], tmp_path / "out-2", SitePolicy(),
                                state_dir=state)
    with pytest.raises(PolicyRefusal, match="min_difference"):
        again.ledger.release("train", swapped, "fold 1 model update")
    # the defence off: the ledger in the out-dir forgets across a new --out
    off = site_work.Site.open("Vall d'Hebron", [cache], tmp_path / "off-1", SitePolicy())
    off.ledger.release("train", released, "fold 0 model update")
    moved = site_work.Site.open("Vall d'Hebron", [cache], tmp_path / "off-2", SitePolicy())
    moved.ledger.release("train", swapped, "fold 1 model update")  # released


def test_a_missing_or_changed_ledger_stops_the_site_until_reset(cache, tmp_path):
    """The ledger's digest beside it: a deleted or edited ledger stops the site, in
    process and at `fedcmr client`'s start, naming the file and --reset-ledger; a reset
    starts afresh (the operator's explicit decision)."""
    state = tmp_path / "state"
    site = site_work.Site.open("Vall d'Hebron", [cache], tmp_path / "out", SitePolicy(),
                               state_dir=state)
    released, _ = one_apart(site)
    site.ledger.release("train", released, "fold 0 model update")
    ledger = state / "released-sets.json"
    assert digest_path(ledger).is_file()
    text = ledger.read_text()
    ledger.write_text(text.replace(released[0], "SOMEONE-ELSE"))
    with pytest.raises(LedgerError, match="changed outside fedcmr"):
        site.ledger.release("train", released, "again")
    ledger.unlink()
    with pytest.raises(LedgerError, match="missing"):
        site.ledger.release("train", released, "again")
    command = ["client", "--site", "Vall d'Hebron", "--data", str(cache), "--superlink",
               "127.0.0.1:1", "--state", str(state), "--out", str(tmp_path / "c"),
               "--max-wait-time", "1"]
    stopped = fedcmr(*command)
    assert stopped.returncode == 2
    assert "released-sets.json: missing" in stopped.stderr and "--reset-ledger" in \
        stopped.stderr
    reset = fedcmr(*command, "--reset-ledger")
    assert "forgot every release" in reset.stderr + reset.stdout
    assert reset.returncode == 1  # it started, and found no coordinator at 127.0.0.1:1
    assert not digest_path(ledger).exists()
    site.ledger.release("train", released, "after the reset")  # a fresh ledger


# -- the coordinator's Control and Runtime APIs ------------------------------------------
def stranger(port: int, path: str, ca: Path, method: str = "POST") -> tuple[int, bytes]:
    """A request as a stranger makes it: holding only the public ca.crt, from an address
    that is not the coordinator's own (127.0.0.2 stands in for another machine)."""
    import http.client
    import ssl

    from flwr.proto import control_pb2

    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30,
                                             source_address=("127.0.0.2", 0))
    try:
        body = control_pb2.ListRunsRequest().SerializeToString() if method == "POST" else None
        connection.request(method, path, body=body,
                           headers={"Content-Type": "application/protobuf"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process and its descendants listen on (read from /proc)."""
    import contextlib
    import os

    from process_tools import descendants

    sockets = set()
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                    if target.startswith("socket:["):
                        sockets.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in sockets:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_stranger_with_the_ca_cannot_drive_the_coordinator(tmp_path):
    """Attack: with only the public ca.crt, on the port the hospitals dial, list the runs
    and start one's own app through Flower's Control API (its ServerApp would run on the
    coordinator). `fedcmr server --secure` answers 403 to every Control and Runtime request
    from elsewhere, on the one port it listens on; its own tools still work. Against
    Flower's SuperLink as it comes (the defence off) the same request lists the runs."""
    from flwr.superlink import main as flower_app
    from flwr.superlink.routers.control import router as control

    from fedcmr.support.ports import free_port

    assert callable(flower_app.create_app)  # what server/superlink_main.py wraps
    certs = tmp_path / "certs"
    subprocess.run([str(REPO / "deploy" / "make_certificates.sh"), str(certs), "Alpha"],
                   check=True, capture_output=True)
    ca, port = certs / "ca.crt", free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            server_command(tmp_path / "run", port, 1, "--secure", str(certs)),
            stdout=out, stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    try:
        wait_for(lambda: stranger_health(port, ca), 120, "the secure SuperLink", server)
        refused = {path: stranger(port, path, ca) for path in (
            "/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/acquire-task",
            "/v1/runtime/pull-messages", "/v1/runtime/responses", "/docs", "/openapi.json")}
        for path, (status, body) in refused.items():
            assert status == 403 and b"only the coordinator's own machine" in body, path
        assert {r.path for r in control.routes} >= {"/v1/control/list-runs",
                                                     "/v1/control/start-run"}
        fleet_status, fleet_body = stranger(port, "/v1/fleet/get-run", ca)
        assert b"only the coordinator's own machine" not in fleet_body  # reaches Flower
        assert listening_ports(server.pid) == {port}  # the one port, guarded
        own = subprocess.run([tool("flwr"), "ls", "127.0.0.1", "--format", "json"],
                             capture_output=True, text=True, timeout=60,
                             env={**ENV, "FLWR_HOME": str(tmp_path / "run" / ".flwr")},
                             cwd=tmp_path / "run")
        assert own.returncode == 0, own.stdout + own.stderr  # the coordinator's own tools
    finally:
        kill_tree(server.pid)
    # the defence off: Flower's own SuperLink, the same flags, the same request
    plain_port = free_port()
    plain = subprocess.Popen(
        [tool("flower-superlink"), "--host", "127.0.0.1", "--port", str(plain_port),
         "--disable-runtime-dependency-installation", "--ssl-ca-certfile", str(ca),
         "--ssl-certfile", str(certs / "superlink.crt"), "--ssl-keyfile",
         str(certs / "superlink.key"), "--enable-supernode-auth"],
        stdout=(tmp_path / "plain.log").open("w"), stderr=subprocess.STDOUT,
        env=flower_env(FLWR_HOME=str(tmp_path / "plain")), start_new_session=True,
        cwd=tmp_path)
    try:
        wait_for(lambda: stranger_health(plain_port, ca), 120, "Flower's SuperLink", plain)
        status, body = stranger(plain_port, "/v1/control/list-runs", ca)
        assert status == 200 and control_runs(body) == []  # the stranger reads the runs
    finally:
        kill_tree(plain.pid)


def stranger_health(port: int, ca: Path) -> bool:
    try:
        return stranger(port, "/health", ca, method="GET")[0] == 200
    except OSError:
        return False


def control_runs(body: bytes) -> list:
    from flwr.proto import control_pb2

    response = control_pb2.ListRunsResponse()
    response.ParseFromString(body)
    return list(response.run_dict)
