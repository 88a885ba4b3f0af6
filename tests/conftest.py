"""Shared test setup: the hypothesis profiles.

HYPOTHESIS_PROFILE chooses one: ``ci`` (the default) keeps every property test to a few
hundred examples so the whole suite stays quick; ``long`` runs 200,000 examples per
property, for a soak on demand::

    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_wire_properties.py

A test with its own ``@settings(max_examples=...)`` keeps that count under either profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile(
    "long",
    max_examples=200_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],  # generation cost is the point of a soak
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
