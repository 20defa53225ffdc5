"""monai_cbo in 3D Slicer and OHIF: a MONAI Label app served by ``monai-cbo label``.

MONAI Label (``monailabel`` from PyPI) is an optional extra; this module imports it only when the server
starts (:func:`~monai_cbo.label.server.serve`), so the rest of monai_cbo never needs it. The app itself is
:mod:`monai_cbo.label.app`:

- ``monai_cbo_prompt`` (infer, *deepgrow* type): the ROI box and/or foreground / background clicks a viewer
  sends -> the key-box propagation of ``monai-cbo segment --key-box`` -> a 3D mask in the volume's geometry;
- ``monai_cbo_auto`` (infer, *segmentation* type): every class of the loaded adapter, no input;
- ``monai_cbo_train`` (train): adapts the bundle to the labels saved so far (``monai-cbo adapt --bundle``: the
  bundle's recipe, a minutes budget, the adapter's own stop rules swept), writes the adapter and its stop rules
  atomically, and the infer tasks use the newest adapter from their next request on.

Whatever arrives over HTTP is hostile: :mod:`~monai_cbo.label.guard` holds the one rule for names and paths
and the request guard (host, origin, token, body size), :mod:`~monai_cbo.label.routes` the cut-down HTTP
surface (uploads, inference queue, train limits); the threat model is in ``docs/label.md``.
"""

from __future__ import annotations

import importlib.util

__all__ = ["INSTALL", "MONAILABEL_VERSION", "monailabel_problem"]

#: the MONAI Label release the app is written and tested against
MONAILABEL_VERSION = "0.8.5"

#: the install that stays in minutes: the extra names what the server imports, and monailabel itself comes
#: without its declared requirements (its ``sam2`` is a source package whose isolated build downloads another
#: torch, and its ``monai[...]`` extras pull mlflow and more; the server never imports either for this app)
INSTALL = f'pip install -e ".[label]" && pip install --no-deps "monailabel=={MONAILABEL_VERSION}"'


def monailabel_problem() -> str | None:
    """Why MONAI Label's server cannot start here (a message naming the install command), or None."""
    if importlib.util.find_spec("monailabel") is None:
        return f"monai-cbo label needs MONAI Label, which is not installed; install it with: {INSTALL}"
    try:
        import monailabel.app  # noqa: F401  the server's own module: imports everything the server needs
    except ImportError as err:
        return (
            f"MONAI Label is installed but cannot start ({type(err).__name__}: {err}); install the extra's "
            f"requirements with: {INSTALL}"
        )
    return None
