"""The handshake at discovery: which described sites may federate, and why the others may not.

Each site's describe reply carries a `SiteFingerprint` (common/handshake.py). The rule:

1. Against the coordinator, which knows the right value itself: the fedcmr version and the
   model digest are the coordinator's own (computed from common/), the cache format version
   is its CACHE_FORMAT_VERSION and the label convention its `label_convention()`. A site
   that differs is refused ("install fedcmr X.Y.Z at the site", "re-run `fedcmr prepare`").
   Old caches (prep.json without a cache format: format 0) are refused the same way.
2. Across the sites, for the preprocessing parameters (output spacing, crop, N4 settings):
   these are `fedcmr prepare` options, so no value is right in itself; they must agree. The
   reference of each is the value a strict majority (more than half) of the sites that
   passed step 1 hold. A site with another value is refused, with the option that makes it
   agree ("re-run `fedcmr prepare` with --crop 10,150,150"). Without a strict majority
   (2 vs 2, 1 vs 1, 2 vs 1 vs 1) the coordinator cannot tell which is right and raises
   `HandshakeError` naming the groups of sites and their values. Sites refused in step 1
   do not vote, but are still told how their preprocessing differs from the reference.

`check_sites` returns one line per refused site, every difference in it as
"field: the site's value, the expected value. Fix: ...", joined by "; ".
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fedcmr.common import __version__
from fedcmr.common.cache_format import CACHE_FORMAT_VERSION, label_convention
from fedcmr.common.handshake import (
    PREP_FIELDS,
    PREPARE_OPTIONS,
    SiteFingerprint,
    model_digest,
    n4_differences,
    prepare_fix,
    show,
)


class HandshakeError(ValueError):
    """The sites disagree on a preprocessing parameter and no value has a strict majority."""


def check_sites(fingerprints: dict[str, SiteFingerprint]) -> dict[str, str]:
    """For each refused site, the one-line reason with the fix (the rule: module docstring).
    Raises HandshakeError when a preprocessing parameter has no strict majority."""
    problems = {name: _against_coordinator(fp) for name, fp in fingerprints.items()}
    voters = {name: fingerprints[name] for name, found in problems.items() if not found}
    for field in PREP_FIELDS:
        reference = _majority(field, voters)
        if reference is None:
            continue
        value, held = reference
        for name, fp in fingerprints.items():
            problems[name] += _against_reference(field, getattr(fp, field), value, held,
                                                 len(voters))
    return {name: "; ".join(found) for name, found in sorted(problems.items()) if found}


def _against_coordinator(fp: SiteFingerprint) -> list[str]:
    install = f"Fix: install fedcmr {__version__} at the site"
    rerun = (f"Fix: re-run `fedcmr prepare` at the site with fedcmr {__version__} and the "
             "same options (frames whose parameters did not change are reused)")
    found = []
    if fp.fedcmr_version != __version__:
        found.append(f"fedcmr_version: the site runs {fp.fedcmr_version}, the coordinator "
                     f"{__version__}. {install}")
    if fp.model_digest != model_digest():
        found.append(f"model_digest: the site's model definition (parameter and buffer names "
                     f"and shapes) is {fp.model_digest}, the coordinator's {model_digest()}. "
                     f"{install} (the coordinator's release, unmodified)")
    if fp.cache_format != CACHE_FORMAT_VERSION:
        old = " (prepared before fedcmr recorded the cache format)" if fp.cache_format == 0 \
            else ""
        found.append(f"cache_format: the site's caches are format {fp.cache_format}{old}, "
                     f"the coordinator reads format {CACHE_FORMAT_VERSION}. {rerun}")
    elif fp.label_convention != label_convention():
        found.append(f"label_convention: the site's caches hold labels {fp.label_convention}, "
                     f"the coordinator's convention is {label_convention()}. {rerun}")
    return found


def _majority(field: str, voters: dict[str, SiteFingerprint]) -> tuple[Any, int] | None:
    """The value more than half of the voters hold and how many hold it; None without
    voters; HandshakeError when the voters disagree with no strict majority."""
    groups: dict[Any, list[str]] = defaultdict(list)
    for name, fp in sorted(voters.items()):
        groups[getattr(fp, field)].append(name)
    if not groups:
        return None
    value, names = max(groups.items(), key=lambda item: len(item[1]))
    if 2 * len(names) > len(voters):
        return value, len(names)
    split = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1]))
    listed = "; ".join(f"{_group_value(field, v, groups)} at {', '.join(n)}" for v, n in split)
    option = f" with {PREPARE_OPTIONS[field]}" if field in PREPARE_OPTIONS else ""
    raise HandshakeError(
        f"the sites disagree on {field} and no value is held by more than half of them: "
        f"{listed}. The coordinator cannot tell which is right. Fix: agree with the "
        f"hospitals on one value and re-run `fedcmr prepare`{option} at the others")


def _group_value(field: str, value: Any, groups: dict[Any, list[str]]) -> str:
    """A value of a split, the N4 settings shortened to those that vary between groups."""
    if field != "n4":
        return show(field, value)
    varying = {key for other in groups for key, _, _ in n4_differences(value, other)}
    shown = [(key, have) for key, have, _ in n4_differences(value, "{}") if key in varying]
    return ",".join(f"{key}={show(key, have)}" for key, have in shown)


def _against_reference(field: str, have: Any, want: Any, held: int, voters: int
                       ) -> list[str]:
    if have == want:
        return []
    majority = f"the majority of the sites ({held} of {voters})"
    pairs = n4_differences(have, want) if field == "n4" else [(field, have, want)]
    return [f"{key}: the site's caches were prepared with {show(key, a)}, {majority} with "
            f"{show(key, b)}. Fix: re-run `fedcmr prepare` at the site {prepare_fix(key, b)}"
            for key, a, b in pairs]
