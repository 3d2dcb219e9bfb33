"""The Flower bridge's error type, in a module of its own so every bridge module can raise it
without importing the others (:mod:`fedsim.flower.common` re-exports it)."""

from __future__ import annotations

from fedsim.errors import FedsimError


class BridgeError(FedsimError, ValueError):
    """A configuration the bridge cannot run; the message names the key and the fix."""
