"""Deprecated alias: `ActivationCache` lives in `circuits.capture` (cc.ActivationCache).

This module goes in the next release.
"""

import warnings

from circuits.capture.cache import ActivationCache

warnings.warn(
    "circuits.cache moved to circuits.capture (cc.ActivationCache); the alias goes in the next "
    "release",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["ActivationCache"]
