"""The fedcmr app bundle (Flower's FAB) as this installation builds it.

Both sides need it: the coordinator submits the installed source folder with `flwr run`,
and a hospital accepts only a bundle whose digest it approved (client/site/app_approval.py),
by default the one its own installation builds. Flower builds a FAB deterministically (the
files sorted, fixed zip dates), and `flwr run APP_DIR` sends exactly
`build_fab_from_disk(APP_DIR)`, so two installations of the same code agree on its sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def app_dir() -> Path:
    """The project folder holding pyproject.toml's [tool.flwr.app] (the installed source)."""
    import fedcmr.common

    root = Path(fedcmr.common.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise FileNotFoundError(f"{root}: no pyproject.toml beside the installed code. Fix: "
                                "install fedcmr from its source folder (pip install -e .)")
    return root


def bundle_digest(app: Path | None = None) -> str:
    """The sha256 (hex) of the FAB Flower builds from `app` (default: the installed source),
    as `flwr run` submits it and a SuperNode receives it. The bytes are those of
    `build_fab_from_disk(app)`, except that the folders its build always leaves out
    (flwr 1.42's APP_PUBLISH_EXCLUDE_PATTERNS: .venv/ and .flwr/ at the top) are not
    walked: a virtual environment in the source folder made that walk take about 6 s at
    every site start. tests/test_app_approval.py checks that both give the same digest."""
    from flwr.cli.build import build_fab_from_files
    from flwr.cli.utils import collect_files
    from flwr.common.constant import FLWR_DIR

    root = (app or app_dir()).expanduser().resolve()
    files: dict[str, Path] = {}
    for entry in root.iterdir():
        if entry.is_symlink() or entry.name in (".venv", FLWR_DIR):
            continue
        if entry.is_dir():
            files.update({f"{entry.name}/{rel}": path
                          for rel, path in collect_files(entry).items()})
        elif entry.is_file():
            files[entry.name] = entry
    return hashlib.sha256(build_fab_from_files(files)[0]).hexdigest()
