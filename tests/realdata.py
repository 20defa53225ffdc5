"""Where the real labelled volumes live for tests: ../shared/data beside the checkout (never copied in).

``MONAI_CBO_SHARED_DATA`` points elsewhere: on a lent GPU machine, which has no ../shared, ``monai-cbo
gpu-check`` sets it to the carried ``.gpudata`` folder (the same layout, the hippocampus cases only).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("MONAI_CBO_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"real data not available: {path} is missing (the ../shared/data folder beside the checkout, "
            "or MONAI_CBO_SHARED_DATA)"
        )
    return path
