"""The crowd ledger reaches /metrics: each entry once, releases apart from spend."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from match.crowd.store import CrowdState


def _value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_ledger_entries_are_counted_once(tmp_path: Path) -> None:
    state = CrowdState(tmp_path)
    spent, released = _value("match_crowd_spend_dollars_total"), _value("match_crowd_released_dollars_total")
    assert state.spend("hit:a", "hit", 150, None) is True
    assert state.spend("hit:a", "hit", 150, None) is False  # a retry records nothing
    assert state.spend("release:a", "release", -40, None) is True
    assert _value("match_crowd_spend_dollars_total") - spent == pytest.approx(1.5)
    assert _value("match_crowd_released_dollars_total") - released == pytest.approx(0.4)
    assert state.spent() == 110
