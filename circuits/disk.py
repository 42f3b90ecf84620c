"""Deprecated alias: disk capture lives in `circuits.capture` (cc.capture_to_disk, cc.load_cache).

This module goes in the next release.
"""

import warnings

from circuits.capture.disk import DiskCache, capture_to_disk, load_cache

warnings.warn(
    "circuits.disk moved to circuits.capture (cc.capture_to_disk, cc.load_cache); the alias goes "
    "in the next release",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["DiskCache", "capture_to_disk", "load_cache"]
