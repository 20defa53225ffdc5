"""Data helpers: datalist loading, the SimpleITK reader, the synthetic demo data."""

from __future__ import annotations

from .datalist import load_datalist

__all__ = ["load_datalist"]
