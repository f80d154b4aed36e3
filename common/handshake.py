"""What a site tells the coordinator at `describe`, so that a site that cannot federate is
refused at once (server/handshake.py) instead of failing later, or silently training on
frames that mean something else.

A `SiteFingerprint` holds, as plain fields: the fedcmr version the site runs, a digest of
the model definition (`model_digest`: the names and shapes of r3d_18's parameters and
buffers), and what its caches were written with: cache format version, label convention,
output spacing, crop and N4 settings (from each cache's prep.json). A site may serve
several caches; they must agree with each other, or the site raises `FingerprintError`
naming both caches.

Old caches: a prep.json written before fedcmr recorded the cache format (no
`cache_format_version` key) reads as format 0, with no label convention, and the
coordinator refuses it: "re-run `fedcmr prepare`". Filling defaults would assume the very
thing the handshake is there to check, and the rerun is cheap (frames whose parameters did
not change are reused; it rewrites prep.json). A cache with no prep.json at all was not
written by `fedcmr prepare`: the site raises `FingerprintError`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from fedcmr.common import __version__
from fedcmr.common.cache_format import PREP_FORMAT_KEY, PREP_INFO, PREP_LABELS_KEY
from fedcmr.common.digests import short_digest

#: The preprocessing parameters the sites must agree on (server: the majority's value).
PREP_FIELDS = ("spacing_mm", "crop", "n4")
#: What every cache of one site must share.
CACHE_FIELDS = ("cache_format", "label_convention", *PREP_FIELDS)
#: The `fedcmr prepare` option that sets each preprocessing parameter.
PREPARE_OPTIONS = {"spacing_mm": "--spacing", "crop": "--crop"}


class FingerprintError(ValueError):
    """A site whose caches cannot be described (no prep.json) or disagree with each other."""


class SiteFingerprint(BaseModel):
    """What must be the same at every site of a run. Plain fields, so that it travels in
    the describe reply's `site` record (common/replies.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fedcmr_version: str
    model_digest: str
    cache_format: int
    spacing_mm: tuple[float, float, float]
    crop: tuple[int, int, int]
    #: The N4 settings as canonical JSON (sorted keys), e.g. {"enabled":true,...}.
    n4: str
    #: "BACKGROUND=0,LV=1,..." (cache_format.label_convention); None: not recorded (format 0).
    label_convention: str | None = None


@functools.cache
def model_digest() -> str:
    """A digest of the model definition: the names and shapes of its parameters and
    buffers. Built on the meta device (no memory, no initialisation), with torch's RNG
    forked so that the caller's is untouched. (torch is imported here, not with the module:
    a message that needs no model never imports it.)"""
    import torch

    from fedcmr.common.model import build_model

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model, _ = build_model("none", quiet=True)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    text = "\n".join(sorted(f"{name}:{tuple(t.shape)}" for name, t in tensors))
    return short_digest(text)


def show(field: str, value: Any) -> str:
    """A value as the messages (and `fedcmr prepare`'s options) write it."""
    if field.startswith("n4."):
        return _json(value)
    if field == "n4" and isinstance(value, str):
        return ",".join(f"{k}={_json(v)}" for k, v in json.loads(value).items())
    if isinstance(value, tuple | list):
        return ",".join(f"{v:g}" for v in value)
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def n4_differences(have: str, want: str) -> list[tuple[str, Any, Any]]:
    """(key, have, want) for each N4 setting that differs ("n4.enabled", ...)."""
    a, b = json.loads(have), json.loads(want)
    return [(f"n4.{k}", a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]


def prepare_fix(field: str, want: Any) -> str:
    """How `fedcmr prepare` is re-run to get `field` (a prep field or an "n4.*" key) to
    `want`: "with --crop 10,150,150", "without --no-n4", ..."""
    if field in PREPARE_OPTIONS:
        return f"with {PREPARE_OPTIONS[field]} {show(field, want)}"
    if field == "n4.enabled":
        return "without --no-n4" if want else "with --no-n4"
    return (f"with the fedcmr release the other caches were prepared with ({field} "
            f"{show(field, want)} is not an option of `fedcmr prepare`)")


def read_cache_fields(cache: Path) -> dict[str, Any]:
    """The CACHE_FIELDS one cache was written with, from its prep.json."""
    path = Path(cache) / PREP_INFO
    rerun = f"Fix: re-run `fedcmr prepare ... --out {cache}`"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        params = info["params"]
        return {"cache_format": int(info.get(PREP_FORMAT_KEY, 0)),
                "label_convention": info.get(PREP_LABELS_KEY),
                "spacing_mm": tuple(float(v) for v in params["spacing_mm"]),
                "crop": tuple(int(v) for v in params["crop"]),
                "n4": json.dumps(params["n4"], sort_keys=True, separators=(",", ":"))}
    except FileNotFoundError:
        raise FingerprintError(f"{path}: missing, so the site cannot say how this cache was "
                               f"prepared. {rerun}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FingerprintError(f"{path}: unreadable ({type(exc).__name__}: {exc}). "
                               f"{rerun}") from None


def site_fingerprint(caches: Sequence[Path]) -> SiteFingerprint:
    """The fingerprint of a site serving `caches`; FingerprintError when they disagree."""
    if not caches:
        raise FingerprintError("the site serves no cache. Fix: pass the prepared cache(s) "
                               "to `fedcmr client --data`")
    first, *others = [Path(c) for c in caches]
    fields = read_cache_fields(first)
    for cache in others:
        theirs = read_cache_fields(cache)
        for name in CACHE_FIELDS:
            if theirs[name] != fields[name]:
                raise FingerprintError(_disagreement(name, (first, fields[name]),
                                                     (cache, theirs[name])))
    return SiteFingerprint(fedcmr_version=__version__, model_digest=model_digest(), **fields)


def _disagreement(name: str, a: tuple[Path, Any], b: tuple[Path, Any]) -> str:
    (first, want), (cache, have) = a, b
    if name == "n4":
        (name, have, want), *_ = n4_differences(have, want)
    if name in PREPARE_OPTIONS or name.startswith("n4."):
        fix = f"re-run `fedcmr prepare ... --out {cache}` {prepare_fix(name, want)}"
    else:
        fix = (f"re-run `fedcmr prepare ... --out CACHE` with fedcmr {__version__} for the "
               "cache that is out of date")
    return (f"the site's caches disagree on {name}: {first / PREP_INFO} has "
            f"{show(name, want)}, {cache / PREP_INFO} {show(name, have)}; a site's caches "
            f"must be prepared alike. Fix: {fix}")
