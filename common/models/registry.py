"""Every model fedcmr can train, by name: the one place a model's name is looked up.

A model is a `ModelPlugin` (common/models/base.py) found by a "module:attribute" path, so
that a name can be checked (a RunConfig, a bundle) without importing the model's code (or
torch). Where they come from, later ones replacing none of the earlier:
- the built-in models (BUILTIN);
- installed packages' entry points in the group `fedcmr.models` (`name = "module:attr"`);
- the environment variable FEDCMR_MODELS, "name=module:attr[,name=module:attr]" (a
  federation's processes inherit it: a test's toy model reaches every site this way);
- `register(name, plugin)` in this process.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from importlib.metadata import entry_points
from typing import Any

#: A ModelPlugin (common/models/base.py; not imported here, so that anything may check a
#: model's name without importing what a model imports).
ModelPlugin = Any

BUILTIN: dict[str, str] = {"cnn": "fedcmr.common.models.cnn:CNN",
                           "measures": "fedcmr.common.models.measures:Measures"}
#: The model a run trains unless it names another (RunConfig.model's default): the study's.
DEFAULT_MODEL = "cnn"
ENTRY_POINT_GROUP = "fedcmr.models"
ENV = "FEDCMR_MODELS"
FIX = (f"use one of these, or add a model: a ModelPlugin registered by an entry point "
       f"({ENTRY_POINT_GROUP}) or ${ENV} (docs/design.md)")

#: What every plug-in has (ModelPlugin's steps).
STEPS = ("begin_fold", "local_train", "score", "fit_pooled", "bundle_metadata",
         "read_weights", "predict", "check_run")

_registered: dict[str, ModelPlugin] = {}


@cache
def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _from_env() -> dict[str, str]:
    found: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in os.environ.get(ENV, "").split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise ValueError(f"${ENV}: {item!r} is not name=module:attribute. Fix: e.g. "
                             f"{ENV}=toy=my_models:TOY")
        found[name.strip()] = target.strip()
    return found


def _paths() -> dict[str, str]:
    return {**_from_env(), **_entry_points(), **BUILTIN}


def names() -> tuple[str, ...]:
    """Every model name known here, built-in first."""
    return tuple(dict.fromkeys([*BUILTIN, *_entry_points(), *_from_env(), *_registered]))


def check_name(name: str) -> str:
    """`name` when a model of that name is known; else a ValueError listing the known."""
    if name not in names():
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}. Fix: {FIX}")
    return name


def register(plugin: ModelPlugin) -> ModelPlugin:
    """Make `plugin` known under its name in this process (a built-in name cannot be
    taken)."""
    if plugin.name in BUILTIN:
        raise ValueError(f"model name {plugin.name!r} is built in; choose another")
    _registered[plugin.name] = plugin
    return plugin


@cache
def _load(path: str) -> ModelPlugin:
    module, _, attribute = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model plug-in {path!r} cannot be loaded ({err}). Fix: install "
                         "the package that provides it, or correct the path") from err
    plugin = found() if isinstance(found, type) else found
    if not all(callable(getattr(plugin, step, None)) for step in STEPS):
        raise ValueError(f"model plug-in {path!r} is not a ModelPlugin. Fix: subclass "
                         "fedcmr.common.models.base.ModelPlugin")
    return plugin


def reads_images(name: str) -> bool:
    """Whether the model reads the prepared images (so that the prior and augmentation
    shape it); a model not installed here is taken to (a study's report of its cells)."""
    try:
        return "images" in get(name).inputs
    except ValueError:
        return True


def get(name: str) -> ModelPlugin:
    """The model called `name`; a ValueError naming the known models otherwise."""
    if name in _registered:
        return _registered[name]
    path = _paths().get(check_name(name))
    if path is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}. Fix: {FIX}")
    plugin = _load(path)
    if plugin.name != name:
        raise ValueError(f"model plug-in {path!r} is called {plugin.name!r}, registered as "
                         f"{name!r}. Fix: register it under its own name")
    return plugin
