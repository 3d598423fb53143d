"""Shared fixtures. Tests never skip: every oracle they need is a test dependency."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261127)
