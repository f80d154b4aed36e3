"""Which hospitals a local federation (`fedcmr federate`, the demo, a study) makes of the
caches it is given: one per centre by default, so that the single cache
`fedcmr prepare --dataset mnms` writes for three centres becomes three sites, or one per
cache folder. Light to import (the command line's choices come from here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from fedcmr.common.cache_format import read_manifest
from fedcmr.server.security import Security

#: How the launcher makes hospitals of caches: one per centre (a multi-centre cache, as
#: `prepare --dataset mnms` writes, becomes several sites) or one per cache folder.
SitePer = Literal["centre", "cache"]
SITE_PER: tuple[str, ...] = get_args(SitePer)


@dataclass
class SiteSpec:
    name: str
    caches: list[Path]
    #: The centres of its caches the site serves (empty: all).
    centres: tuple[str, ...] = ()


def sites_from_caches(caches: list[Path], per: SitePer = "centre") -> list[SiteSpec]:
    """The hospitals of a local federation, named by their centres.

    per="centre": one site per centre, serving only that centre's frames from the cache(s)
    holding it (a centre found in several caches is one site reading all of them); the
    paper's four hospitals from an M&Ms cache of three centres and an ACDC cache.
    per="cache": one site per cache folder, named by its centres joined with " + ".
    A cache without frames is a site named after its folder either way."""
    if per not in SITE_PER:
        raise ValueError(f"site per {per!r}: unknown. Fix: choose one of {', '.join(SITE_PER)}")
    sites: list[SiteSpec] = []
    by_centre: dict[str, SiteSpec] = {}
    for cache in map(Path, caches):
        centres = sorted({e.centre for e in read_manifest(cache)})
        if per == "cache" or not centres:
            sites.append(SiteSpec(name=" + ".join(centres) or cache.name,
                                  caches=[cache.resolve()]))
            continue
        for centre in centres:
            if centre not in by_centre:
                by_centre[centre] = SiteSpec(name=centre, caches=[], centres=(centre,))
                sites.append(by_centre[centre])
            by_centre[centre].caches.append(cache.resolve())
    _check_distinct(sites)
    return sites


def _check_distinct(sites: list[SiteSpec]) -> None:
    """Each site needs its own node name and output folder."""
    seen: dict[str, SiteSpec] = {}
    for site in sites:
        node = Security.node_name(site.name)
        other = seen.setdefault(node, site)
        if other is not site:
            raise ValueError(
                f"sites {other.name!r} ({', '.join(map(str, other.caches))}) and "
                f"{site.name!r} ({', '.join(map(str, site.caches))}) would share the node "
                f"name {node!r}. Fix: pass each centre's cache once, use --site-per centre, "
                "or give the centres distinct names when preparing their caches")
