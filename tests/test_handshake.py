"""The handshake at discovery: a site whose fedcmr, model, cache format or preprocessing
differs from the run's is refused with the field, both values and the fix, on fingerprints
made from real caches (and one through the ClientApp's describe handler and audit gate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cache_factory import write_prep_info, write_site_cache
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

import fedcmr.common.handshake as common_handshake
import fedcmr.common.model as common_model
from fedcmr.client.data.prep_config import N4Params, PrepConfig
from fedcmr.client.site import client_app
from fedcmr.client.site import work as site_work
from fedcmr.client.site.audit import AUDIT_FILE, audit_mod
from fedcmr.common import __version__
from fedcmr.common.cache_format import CACHE_FORMAT_VERSION, PREP_INFO, label_convention
from fedcmr.common.handshake import FingerprintError, SiteFingerprint, site_fingerprint
from fedcmr.common.protocol import CONFIG, Kind
from fedcmr.common.replies import DescribeReply
from fedcmr.server.handshake import HandshakeError, check_sites

PAPER = PrepConfig()  # crop 10,150,150 at 1 mm, N4 on


def cache(root: Path, name: str, prep: PrepConfig = PAPER, **info) -> Path:
    """A real two-subject cache whose prep.json holds `prep` (and `info` at the top)."""
    path = write_site_cache(root / name, name, 1, 1, prep=prep)
    if info:
        write_prep_info(path, prep, **info)
    return path


def fingerprints(root: Path, odd: dict[str, PrepConfig] | None = None,
                 names=("Alpha", "Bravo", "Charlie")) -> dict[str, SiteFingerprint]:
    """Paper-prepared sites `names`, plus the `odd` ones with their own preparation."""
    sites = {name: PAPER for name in names} | (odd or {})
    return {name: site_fingerprint([cache(root, name, prep)]) for name, prep in sites.items()}


def test_sites_that_agree_pass_and_carry_the_coordinators_values(tmp_path):
    found = fingerprints(tmp_path)
    assert check_sites(found) == {}
    alpha = found["Alpha"]
    assert (alpha.fedcmr_version, alpha.cache_format) == (__version__, CACHE_FORMAT_VERSION)
    assert (alpha.crop, alpha.spacing_mm) == ((10, 150, 150), (1.0, 1.0, 1.0))
    assert json.loads(alpha.n4)["enabled"] is True
    assert alpha.label_convention == label_convention() == "BACKGROUND=0,LV=1,MYO=2,RV=3"


def test_a_site_prepared_with_a_120_crop_is_refused_naming_the_crop(tmp_path):
    """Today's bug: frames are resized to the profile's input, so a 120 crop would silently
    federate with another field of view."""
    found = fingerprints(tmp_path, {"Delta": PrepConfig(crop=(10, 120, 120))})
    assert check_sites(found) == {"Delta": (
        "crop: the site's caches were prepared with 10,120,120, the majority of the sites "
        "(3 of 4) with 10,150,150. Fix: re-run `fedcmr prepare` at the site with "
        "--crop 10,150,150")}


def test_a_site_prepared_with_another_spacing_is_refused_naming_the_spacing(tmp_path):
    found = fingerprints(tmp_path, {"Delta": PrepConfig(spacing_mm=(1.25, 1.25, 1.0))})
    assert check_sites(found) == {"Delta": (
        "spacing_mm: the site's caches were prepared with 1.25,1.25,1, the majority of the "
        "sites (3 of 4) with 1,1,1. Fix: re-run `fedcmr prepare` at the site with "
        "--spacing 1,1,1")}


def test_a_site_prepared_without_n4_is_refused_naming_the_n4_setting(tmp_path):
    found = fingerprints(tmp_path, {"Delta": PrepConfig(n4=N4Params(enabled=False))})
    assert check_sites(found) == {"Delta": (
        "n4.enabled: the site's caches were prepared with false, the majority of the sites "
        "(3 of 4) with true. Fix: re-run `fedcmr prepare` at the site without --no-n4")}
    # an N4 setting that is no option of `fedcmr prepare` is named too
    fewer = fingerprints(tmp_path / "b", {"Delta": PrepConfig(n4=N4Params(iterations=(20,)))})
    assert check_sites(fewer)["Delta"].startswith(
        "n4.iterations: the site's caches were prepared with [20], the majority of the sites "
        "(3 of 4) with [50,50,50,50]. Fix: re-run `fedcmr prepare` at the site with the "
        "fedcmr release")


def test_a_site_running_another_fedcmr_version_is_refused(tmp_path, monkeypatch):
    found = fingerprints(tmp_path)
    with monkeypatch.context() as patch:  # what that site's own install computes
        patch.setattr(common_handshake, "__version__", "0.0.9")
        found["Delta"] = site_fingerprint([cache(tmp_path, "Delta")])
    assert found["Delta"].fedcmr_version == "0.0.9"
    assert check_sites(found) == {"Delta": (
        f"fedcmr_version: the site runs 0.0.9, the coordinator {__version__}. Fix: install "
        f"fedcmr {__version__} at the site")}


def test_a_site_with_another_model_definition_is_refused(tmp_path, monkeypatch):
    found = fingerprints(tmp_path)
    real = common_model.build_model

    def two_logits(*args, **kwargs):
        model, info = real(*args, **kwargs)
        model.fc = nn.Linear(model.fc.in_features, 2)
        return model, info

    ours = common_handshake.model_digest()
    with monkeypatch.context() as patch:  # the site's (modified) install
        patch.setattr(common_model, "build_model", two_logits)  # model_digest imports it
        common_handshake.model_digest.cache_clear()
        found["Delta"] = site_fingerprint([cache(tmp_path, "Delta")])
    common_handshake.model_digest.cache_clear()
    theirs = found["Delta"].model_digest
    assert theirs != ours == common_handshake.model_digest()
    assert check_sites(found) == {"Delta": (
        f"model_digest: the site's model definition (parameter and buffer names and shapes) "
        f"is {theirs}, the coordinator's {ours}. Fix: install fedcmr {__version__} at the "
        "site (the coordinator's release, unmodified)")}


def test_a_cache_in_another_format_or_an_old_one_is_refused(tmp_path):
    found = fingerprints(tmp_path)
    newer = cache(tmp_path, "Delta", cache_format_version=CACHE_FORMAT_VERSION + 1)
    old = cache(tmp_path, "Echo", cache_format_version=None, label_convention=None)
    found |= {"Delta": site_fingerprint([newer]), "Echo": site_fingerprint([old])}
    rerun = (f"Fix: re-run `fedcmr prepare` at the site with fedcmr {__version__} and the "
             "same options (frames whose parameters did not change are reused)")
    assert check_sites(found) == {
        "Delta": (f"cache_format: the site's caches are format {CACHE_FORMAT_VERSION + 1}, "
                  f"the coordinator reads format {CACHE_FORMAT_VERSION}. {rerun}"),
        "Echo": ("cache_format: the site's caches are format 0 (prepared before fedcmr "
                 f"recorded the cache format), the coordinator reads format "
                 f"{CACHE_FORMAT_VERSION}. {rerun}")}


def test_a_cache_with_another_label_convention_is_refused(tmp_path):
    found = fingerprints(tmp_path)
    swapped = cache(tmp_path, "Delta", label_convention="BACKGROUND=0,LV=3,MYO=2,RV=1")
    found["Delta"] = site_fingerprint([swapped])
    assert check_sites(found)["Delta"].startswith(
        "label_convention: the site's caches hold labels BACKGROUND=0,LV=3,MYO=2,RV=1, the "
        "coordinator's convention is BACKGROUND=0,LV=1,MYO=2,RV=3. Fix: re-run")


def test_a_two_against_two_split_cannot_be_decided(tmp_path):
    narrow = PrepConfig(crop=(10, 120, 120))
    found = fingerprints(tmp_path, {"Charlie": narrow, "Delta": narrow},
                         names=("Alpha", "Bravo"))
    with pytest.raises(HandshakeError, match=(
            r"the sites disagree on crop and no value is held by more than half of them: "
            r"10,150,150 at Alpha, Bravo; 10,120,120 at Charlie, Delta\. The coordinator "
            r"cannot tell which is right\. Fix: .* with --crop at the others")):
        check_sites(found)
    assert issubclass(HandshakeError, ValueError)


def test_only_sites_that_pass_the_coordinators_checks_vote(tmp_path, monkeypatch):
    """Two out-of-date sites with a 120 crop do not outvote the one site that may federate;
    they are told about both differences."""
    narrow = PrepConfig(crop=(10, 120, 120))
    found = fingerprints(tmp_path, names=("Alpha",))
    with monkeypatch.context() as patch:
        patch.setattr(common_handshake, "__version__", "0.0.9")
        for name in ("Bravo", "Charlie"):
            found[name] = site_fingerprint([cache(tmp_path, name, narrow)])
    refused = check_sites(found)
    assert sorted(refused) == ["Bravo", "Charlie"]
    assert refused["Bravo"].startswith("fedcmr_version: the site runs 0.0.9")
    assert "; crop: the site's caches were prepared with 10,120,120, the majority of the " \
           "sites (1 of 1) with 10,150,150" in refused["Bravo"]


def test_a_sites_caches_must_agree_with_each_other(tmp_path):
    wide = cache(tmp_path, "wide")
    narrow = cache(tmp_path, "narrow", PrepConfig(crop=(10, 120, 120)))
    assert site_fingerprint([wide, cache(tmp_path, "also")]).crop == (10, 150, 150)
    site = site_work.Site.open("Alpha", [wide, narrow], tmp_path / "out")
    with pytest.raises(FingerprintError) as err:
        site_work.describe(site)
    assert str(err.value) == (
        f"the site's caches disagree on crop: {wide / PREP_INFO} has 10,150,150, "
        f"{narrow / PREP_INFO} 10,120,120; a site's caches must be prepared alike. Fix: "
        f"re-run `fedcmr prepare ... --out {narrow}` with --crop 10,150,150")
    off = cache(tmp_path, "off", PrepConfig(n4=N4Params(enabled=False)))
    with pytest.raises(FingerprintError, match=r"disagree on n4\.enabled: .* without --no-n4"):
        site_fingerprint([wide, off])


def test_a_cache_without_prep_json_cannot_be_described(tmp_path):
    path = cache(tmp_path, "Alpha")
    (path / PREP_INFO).unlink()
    with pytest.raises(FingerprintError, match=rf"{path / PREP_INFO}: missing.*--out {path}"):
        site_fingerprint([path])


def test_fedcmr_prepare_writes_what_the_fingerprint_reads(tmp_path):
    from mri_factory import write_acdc_patient

    from fedcmr.client.data.loaders.acdc import load_acdc
    from fedcmr.client.data.prepare import run_prepare

    write_acdc_patient(tmp_path / "acdc", 21, "HCM")
    config = PrepConfig(crop=(4, 32, 32), n4=N4Params(enabled=False))
    run_prepare(load_acdc(tmp_path / "acdc"), config, tmp_path / "cache", progress=False)
    found = site_fingerprint([tmp_path / "cache"])
    assert (found.cache_format, found.label_convention) == (CACHE_FORMAT_VERSION,
                                                            label_convention())
    assert (found.crop, found.spacing_mm) == (config.crop, config.spacing_mm)
    assert json.loads(found.n4) == config.n4.model_dump(mode="json")


@pytest.fixture
def server_identity(monkeypatch):
    """What the ServerApp process has under Flower's runtime: messages need a run id."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def describe_through_the_client_app(root: Path, node: int, name: str, prep: PrepConfig
                                    ) -> Message:
    """The describe message delivered to the real ClientApp handler behind its audit gate,
    as a SuperNode would."""
    data = cache(root, name, prep)
    context = Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                      node_config={"site": name, "data-path": str(data),
                                   "out-dir": str(root / f"out-{name}")})
    msg = Message(content=RecordDict({CONFIG: ConfigRecord()}), message_type=Kind.DESCRIBE,
                  dst_node_id=node)
    msg.metadata.__dict__["_message_id"] = f"m{node}"
    msg.metadata.__dict__["_src_node_id"] = 0
    return audit_mod(msg, context, client_app.HANDLERS[Kind.DESCRIBE])


def test_the_fingerprint_travels_in_describe_through_the_audit_gate(tmp_path, server_identity):
    sites = {"Alpha": PAPER, "Bravo": PAPER, "Delta": PrepConfig(crop=(10, 120, 120))}
    replies = {name: DescribeReply.from_message(
        describe_through_the_client_app(tmp_path, node, name, prep))
        for node, (name, prep) in enumerate(sites.items(), start=101)}
    for name, reply in replies.items():
        assert reply.site == name
        assert reply.fingerprint == site_fingerprint([tmp_path / name])
        (line,) = (tmp_path / f"out-{name}" / AUDIT_FILE).read_text().splitlines()
        audited = json.loads(line)
        assert audited["blocked"] == []
        assert {"fingerprint-crop", "fingerprint-model_digest"} <= set(
            audited["records"]["site"]["keys"])
    refused = check_sites({name: reply.fingerprint for name, reply in replies.items()})
    assert list(refused) == ["Delta"] and refused["Delta"].startswith(
        "crop: the site's caches were prepared with 10,120,120")
