"""Human-readable quantities, one formatter for every place fedsim prints a size."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """``1536`` → ``1.50 KiB`` (binary units, about three significant digits)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{n:.0f} B"
            return f"{n:.{2 if abs(n) < 10 else 1 if abs(n) < 100 else 0}f} {unit}"
        n /= 1024
    return ""
