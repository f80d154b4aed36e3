"""Reading a metadata CSV whose column spellings vary between releases."""

from __future__ import annotations

import csv
from pathlib import Path

from fedcmr.client.data.errors import DatasetError


def normalise(name: str) -> str:
    """'External code' == 'external_code' == 'ExternalCode'."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Normalised header and rows keyed by it; the delimiter is sniffed (, ; or tab)."""
    if path.suffix.lower() in {".xlsx", ".xls"}:
        raise DatasetError(f"{path}: spreadsheet metadata is not read directly. Fix: save it "
                           "as CSV (File > Save As > CSV) and pass that file")
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror}). Fix: check the path "
                           "and its permissions") from None
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    if not reader.fieldnames:
        raise DatasetError(f"{path}: empty CSV. Fix: give the metadata file with its header")
    header = [normalise(name) for name in reader.fieldnames]
    rows = [{normalise(k): (v or "").strip() for k, v in row.items() if k is not None}
            for row in reader]
    return header, rows


def resolve_columns(path: Path, header: list[str],
                    wanted: dict[str, tuple[str, ...]], optional: tuple[str, ...] = ()
                    ) -> dict[str, str]:
    """Map each wanted role to the first alias present; a missing required one is fatal."""
    present = set(header)
    found: dict[str, str] = {}
    missing = []
    for role, aliases in wanted.items():
        hit = next((normalise(a) for a in aliases if normalise(a) in present), None)
        if hit:
            found[role] = hit
        elif role not in optional:
            missing.append(f"{role} (one of: {', '.join(aliases)})")
    if missing:
        raise DatasetError(f"{path}: missing column {'; '.join(missing)}. Fix: add the "
                           f"column or rename it (columns found: {', '.join(sorted(present))})")
    return found

