"""support/flower_patches.py: each change to Flower's behaviour, against Flower's own code. A
test fails when Flower renames or reshapes what a patch reaches, and the version guard
refuses a release the patches were not tested on."""

from __future__ import annotations

import threading

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from fedcmr.support import flower_patches


@pytest.fixture
def flower_defaults():
    """Flower's own pull schedule, put back after the test."""
    functions = (inflatable_utils.pull_objects,
                 inflatable_utils.pull_and_inflate_object_from_tree)
    saved = [dict(f.__kwdefaults__) for f in functions]
    yield
    for function, defaults in zip(functions, saved, strict=True):
        function.__kwdefaults__.clear()
        function.__kwdefaults__.update(defaults)


def waits_before_arrival(monkeypatch, late_tries: int) -> list[float]:
    """The waits Flower's pull_objects makes for an object that is missing `late_tries`
    times, read off its own wait calls (no clock involved)."""
    waits: list[float] = []

    class Recorded(threading.Event):
        def wait(self, timeout=None):
            if timeout is None:  # the executor's own waits
                return super().wait()
            waits.append(timeout)
            return False

    monkeypatch.setattr(inflatable_utils.threading, "Event", Recorded)
    monkeypatch.setattr(inflatable_utils.random, "uniform", lambda a, b: 0.0)  # no jitter
    tries = []

    def pull(object_id: str) -> bytes:
        tries.append(object_id)
        if len(tries) <= late_tries:
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert inflatable_utils.pull_objects(["a"], pull) == {"a": b"content"}
    return waits


def test_an_object_that_arrives_late_is_fetched_within_a_fifth_of_a_second(
        monkeypatch, flower_defaults):
    flower = waits_before_arrival(monkeypatch, 6)
    assert flower == [1, 2, 4, 8, 10, 10]  # the defence off: Flower's schedule, 35 s
    flower_patches.fast_object_pulls()
    ours = waits_before_arrival(monkeypatch, 6)
    assert ours == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.2, 0.2])
    assert max(ours) <= flower_patches.PULL_MAX_WAIT_S
    # a slow upload is still waited for as long as Flower would (500 tries of up to 10 s)
    defaults = inflatable_utils.pull_objects.__kwdefaults__
    assert defaults["max_tries_per_object"] * defaults["backoff_cap"] == pytest.approx(5000)
    assert inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__[
        "initial_backoff"] == flower_patches.PULL_FIRST_WAIT_S


def test_another_flower_release_is_refused_with_the_fix(monkeypatch):
    assert flower_patches.installed_flower() == flower_patches.TESTED_FLOWER
    flower_patches.check_version()
    monkeypatch.setattr(flower_patches, "installed_flower", lambda: "1.43.0")
    with pytest.raises(flower_patches.FlowerVersionError,
                       match=r"tested on Flower 1\.42\.0 .* has Flower 1\.43\.0\. Fix: pip "
                             r"install 'flwr\[simulation\]==1\.42\.0'"):
        flower_patches.apply()
