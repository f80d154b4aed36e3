"""A cache holding several centres (as `prepare --dataset mnms` writes) is one hospital per
centre in the local launcher: each site reads only its centre's frames from the shared cache
and splits them exactly as it would its own single-centre cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cache_factory import write_site_cache
from flwr.app import Context, RecordDict

from fedcmr.client.site import client_app
from fedcmr.client.site import work as site_work
from fedcmr.common.cache_format import CacheError, read_manifest, write_manifest
from fedcmr.common.node_config import SIM_SITES, write_simulated_nodes
from fedcmr.common.protocol import Order
from fedcmr.common.run_config import RunConfig
from fedcmr.lab.local_federation import LocalFederation, site_dir, sites_from_caches

#: Three centres in one cache, as M&Ms, and a fourth in its own, as ACDC.
MNMS = {"Vall d'Hebron": (7, 6), "Sagrada Familia": (5, 6), "Sant Pau": (6, 8)}
ACDC = ("ACDC", (8, 7))


def merge_caches(dest: Path, caches: list[Path]) -> Path:
    """One cache holding every frame of `caches` (the same files, one manifest)."""
    entries = []
    for cache in caches:
        shutil.copytree(cache / "frames", dest / "frames", dirs_exist_ok=True)
        entries += read_manifest(cache)
    shutil.copy(caches[0] / "prep.json", dest / "prep.json")
    write_manifest(dest, entries)
    return dest


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    """Each M&Ms centre's own cache, the three merged into one, and the ACDC cache."""
    root = tmp_path_factory.mktemp("caches")
    own = {name: write_site_cache(root / f"own-{i}", name, *counts, seed=i)
           for i, (name, counts) in enumerate(MNMS.items())}
    shared = merge_caches(root / "mnms", list(own.values()))
    return {**own, "mnms": shared, "acdc": write_site_cache(root / "acdc", ACDC[0], *ACDC[1])}


def test_the_shared_cache_really_holds_three_centres(caches):
    assert {e.centre for e in read_manifest(caches["mnms"])} == set(MNMS)


def test_one_site_per_centre_by_default_and_per_cache_on_request(caches):
    both = [caches["mnms"], caches["acdc"]]
    per_centre = sites_from_caches(both)
    assert [(s.name, s.centres, s.caches) for s in per_centre] == [
        ("Sagrada Familia", ("Sagrada Familia",), [caches["mnms"].resolve()]),
        ("Sant Pau", ("Sant Pau",), [caches["mnms"].resolve()]),
        ("Vall d'Hebron", ("Vall d'Hebron",), [caches["mnms"].resolve()]),
        ("ACDC", ("ACDC",), [caches["acdc"].resolve()])]
    per_cache = sites_from_caches(both, per="cache")
    assert [(s.name, s.centres) for s in per_cache] == [
        ("Sagrada Familia + Sant Pau + Vall d'Hebron", ()), ("ACDC", ())]
    # a centre found in two caches is one site reading both
    (alone,) = sites_from_caches([caches["Sant Pau"], caches["Sant Pau"]])
    assert alone.caches == [caches["Sant Pau"].resolve()] * 2


def test_bad_site_divisions_say_what_to_do(caches, tmp_path):
    with pytest.raises(ValueError, match="site per 'hospital'.*centre, cache"):
        sites_from_caches([caches["acdc"]], per="hospital")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share the node name 'sant-pau'.*Fix"):
        sites_from_caches([caches["Sant Pau"]] * 2, per="cache")
    twin = write_site_cache(tmp_path / "twin", "Sant-Pau", 3, 3)  # the same slug
    with pytest.raises(ValueError, match="'Sant Pau'.*'Sant-Pau'.*node name 'sant-pau'"):
        sites_from_caches([caches["Sant Pau"], twin])


@pytest.mark.parametrize("fold", [0, 3])
def test_a_centre_of_a_shared_cache_splits_as_its_own_cache(caches, tmp_path, fold):
    """Fold 0 (and another fold): the same train, validation and test subjects per site,
    whether the centre's frames come from the 3-centre cache or from its own."""
    order = Order(run=RunConfig(profile="smoke"), fold=fold)
    for centre in MNMS:
        shared = site_work.Site.open(centre, [caches["mnms"]], tmp_path, centres=(centre,))
        own = site_work.Site.open(centre, [caches[centre]], tmp_path)
        assert shared.centres == [centre]
        assert len(shared.frames) == len(own.frames) == 2 * sum(MNMS[centre])
        shared_parts, own_parts = shared.parts(order), own.parts(order)
        for part in ("train", "val", "test"):
            assert ([(f.subject, f.entry.phase) for f in shared_parts[part]]
                    == [(f.subject, f.entry.phase) for f in own_parts[part]]), (centre, part)
        assert shared_parts["test"], centre  # a real test split was compared
        described = site_work.describe(shared)
        assert (described.centres, described.subjects) == ((centre,), sum(MNMS[centre]))
    # unfiltered, the shared cache is one site of all three centres' subjects
    everything = site_work.Site.open("all", [caches["mnms"]], tmp_path)
    assert everything.centres == sorted(MNMS)


def test_a_centre_the_caches_lack_is_refused_by_name(caches, tmp_path):
    with pytest.raises(CacheError, match=r"no frames of centre\(s\) \['ACDC'\].*Fix"):
        site_work.Site.open("ACDC", [caches["mnms"]], tmp_path, centres=("ACDC",))


def test_simulated_nodes_open_only_their_centre(caches, tmp_path):
    """The launcher's node table, read back by each simulated node as the ClientApp does:
    four sites, each holding one centre's frames."""
    fed = LocalFederation(tmp_path / "run", runtime="simulation",
                          sites=sites_from_caches([caches["mnms"], caches["acdc"]]))
    write_simulated_nodes(fed.node_table, [fed.node_config(s) for s in fed.sites])
    opened = []
    for pid, spec in enumerate(fed.sites):
        context = Context(run_id=1, node_id=pid, node_config={"partition-id": pid,
                                                              "num-partitions": 4},
                          state=RecordDict(), run_config={SIM_SITES: str(fed.node_table)})
        site = client_app.open_site(context)
        assert (site.name, site.centres) == (spec.name, list(spec.centres))
        assert site.out_dir == site_dir(fed.run_dir, spec)
        opened.append(site)
    assert len({s.out_dir for s in opened}) == 4
    assert sum(len(s.frames) for s in opened) == len(read_manifest(caches["mnms"])) + len(
        read_manifest(caches["acdc"]))


def test_fedcmr_client_serves_one_centre_of_a_shared_cache_on_request(caches, caplog):
    from fedcmr.cli import main
    from fedcmr.client.commands import served_centres
    from fedcmr.support.cli_options import EXIT_BAD_INPUT

    assert served_centres([caches["mnms"]], ["Sant Pau"]) == ("Sant Pau",)
    assert served_centres([caches["mnms"]], None) == ()
    code = main(["client", "--site", "ACDC", "--data", str(caches["mnms"]), "--superlink",
                 "127.0.0.1:1", "--centre", "ACDC"])
    assert code == EXIT_BAD_INPUT
    assert "--centre ACDC: not in" in caplog.text and "Fix: name a centre" in caplog.text
