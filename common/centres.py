"""The study's centres, and how M&Ms centre numbers become names.

The public M&Ms CSVs give the centre as a number (1-6); the authors' copy gives names. The
number-to-name table below is our best reading of the M&Ms release notes, not a fact read
from a file: every use cross-checks it against the CSV's own vendor column and warns on a
mismatch, and `--centre-map "1=Name,2=Name"` replaces it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Vendor letters as M&Ms uses them.
MNMS_VENDORS: dict[str, str] = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}


class CentreInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    vendor: str


#: Default M&Ms centre numbers -> names (override with --centre-map; see module docstring).
MNMS_DEFAULT_CENTRES: dict[str, CentreInfo] = {
    "1": CentreInfo(name="Sagrada Familia", vendor="Siemens"),
    "2": CentreInfo(name="Vall d'Hebron", vendor="Philips"),
    "3": CentreInfo(name="Hamburg", vendor="Philips"),
    "4": CentreInfo(name="Dexeus", vendor="GE"),
    "5": CentreInfo(name="SantPau", vendor="Canon"),
    "6": CentreInfo(name="Alberta", vendor="Siemens"),
}

#: The three M&Ms centres of Linardos et al. 2022 (Table 1), used when none is named.
STUDY_MNMS_CENTRES: tuple[str, ...] = ("Vall d'Hebron", "Sagrada Familia", "SantPau")
ACDC_CENTRE = "ACDC"
ACDC_VENDOR = "Siemens"

#: Table 1 subject counts (NOR, HCM) per centre: the synthetic cohort reproduces them.
TABLE1_COUNTS: dict[str, tuple[int, int]] = {
    "Vall d'Hebron": (21, 25),
    "Sagrada Familia": (33, 37),
    "SantPau": (14, 10),
    "ACDC": (20, 20),
}


def parse_centre_map(text: str) -> dict[str, str]:
    """`"1=Vall d'Hebron,2=Sagrada Familia"` -> {"1": "Vall d'Hebron", ...}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        number, sep, name = item.partition("=")
        if not sep or not number.strip() or not name.strip():
            raise ValueError(f"--centre-map entry {item!r} is not NUMBER=NAME")
        mapping[number.strip()] = name.strip()
    return mapping


def slug(name: str) -> str:
    """A file-system-safe form of a centre name (for cache folders)."""
    keep = [c if c.isalnum() else "-" for c in name.lower()]
    return "-".join(filter(None, "".join(keep).split("-")))
