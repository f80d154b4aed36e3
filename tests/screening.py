"""The server's update checks as the update tests call them (tests/test_update_checks.py,
tests/test_update_codec.py)."""

from __future__ import annotations

from fedcmr.common.replies import TrainReply
from fedcmr.server import update_checks


def screen(*args, **kw):
    """The update checks' verdict as (messages that may be aggregated, rejections), each
    accepted reply parsed once (checked here too)."""
    screened = update_checks.screen(*args, **kw)
    accepted = {m.metadata.src_node_id for m in screened.messages if not m.has_error()}
    assert set(screened.replies) == accepted
    assert all(isinstance(r, TrainReply) for r in screened.replies.values())
    return screened.messages, screened.rejected
