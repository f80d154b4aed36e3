"""What every side's command line shares: exit codes, lazily imported handlers, and options
built from the settings models, so that a flag's default, choices and help come from the
one place that defines the setting (the pydantic model)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from fedcmr.common.flat import FlatModel
from fedcmr.common.models import registry
from fedcmr.common.run_config import RunConfig

#: Exit codes of every command (docs/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SKIPPED = 3
#: The run finished, but its figures miss a site (named in the log and metrics.json).
EXIT_PARTIAL = 4
EXIT_INTERRUPTED = 130


def lazy(path: str) -> Callable[[argparse.Namespace], int]:
    """The handler `module:function`, imported only when its command runs, so that
    `fedcmr --help` starts fast and a hospital never imports what it does not run."""
    module, _, name = path.rpartition(":")

    def run(args: argparse.Namespace) -> int:
        return getattr(import_module(module), name)(args)

    return run


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a Literal (also one inside Optional), else None."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if get_origin(arg) is Literal:
                return get_args(arg)
    return None


def add_model_option(parser: argparse.ArgumentParser, model: type[FlatModel], name: str,
                     flag: str | None = None, **overrides: Any) -> None:
    """`--<flat key>` for the model's field `name`: its flat default, its Literal's choices
    and its description as help. `overrides` go to add_argument as they are."""
    key = model.flat_key(name)
    info = model.model_fields[name]
    default = model().to_flat()[key]
    kwargs: dict[str, Any] = {"default": default, "help": info.description or "",
                              "dest": key.replace("-", "_")}
    choices = literal_choices(info.annotation)
    if choices:
        kwargs["choices"] = list(choices)
    elif isinstance(default, bool):
        kwargs["action"] = "store_true"
    else:
        kwargs["type"] = type(default)
    kwargs.update(overrides)
    if kwargs.get("default") is not None and "%(default)" not in kwargs["help"]:
        kwargs["help"] += " (default: %(default)s)"
    parser.add_argument(flag or f"--{key}", **kwargs)


def flat_from_args(model: type[FlatModel], args: argparse.Namespace) -> dict[str, Any]:
    """The model's flat keys with the values parsed into `args`."""
    return {k: getattr(args, k.replace("-", "_")) for k in model.flat_keys()
            if hasattr(args, k.replace("-", "_"))}


def add_run_options(p: argparse.ArgumentParser, caches_required: bool = True) -> None:
    """Options that define a study run (RunConfig); shared by `centralized`, `federate`
    and `server`."""
    if caches_required:
        p.add_argument("--cache", type=Path, nargs="+", required=True,
                       help="prepared cache folder(s), one per dataset or site")
    for name in RunConfig.FLAT:
        # a model's name is any the registry knows (plug-ins too): choices from it
        extra = {"choices": list(registry.names())} if name == "model" else {}
        add_model_option(p, RunConfig, name, **extra)
    p.add_argument("--out", type=Path, required=True, help="run folder")


def run_config_from_args(args: argparse.Namespace, centres: list[str]) -> RunConfig:
    return RunConfig.from_flat(flat_from_args(RunConfig, args), centres=tuple(sorted(centres)))
