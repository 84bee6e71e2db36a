"""Every crowd test talks to MTurk-shaped endpoints with dummy credentials, never real ones."""

from __future__ import annotations

import pytest

from tests.crowd.harness import DUMMY_ENV


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy AWS credentials and region for boto3 (match's crowd server accepts any)."""
    for key, value in DUMMY_ENV.items():
        monkeypatch.setenv(key, value)
