"""Hypothesis profiles: under CI (CI=true) every run tries the same, reproducible examples.

Elsewhere the examples are random, so local runs keep exploring; a failure found there is
saved in `.hypothesis/` and replayed first on the next local run.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")
