"""Dependency-free figures for the bench report: SVG box plots and PNG overlays."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from html import escape

import numpy as np

__all__ = ["box_plot_svg", "encode_png", "largest_slice_overlay", "overlay_panels"]

_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB ``uint8`` array [H, W, 3] (no imaging library needed)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB array [H, W, 3], got shape {rgb.shape}")
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def overlay_panels(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, scale: int | None = None) -> np.ndarray:
    """Three panels side by side: the slice, ground truth (green) and prediction (red) filled at 40 % with
    their outlines; ``image`` [H, W] in [0, 1], masks [H, W] bool. Rows are shown top to bottom as given."""
    image = np.clip(np.nan_to_num(image.astype(np.float32)), 0, 1)
    scale = scale or max(1, 192 // max(image.shape))
    grey = np.repeat((image * 255).astype(np.uint8)[..., None], 3, axis=2)
    panels = [grey]
    for mask, colour in ((gt, (0, 200, 0)), (pred, (230, 30, 30))):
        panel = grey.astype(np.float32)
        mask = mask.astype(bool)
        panel[mask] = 0.6 * panel[mask] + 0.4 * np.array(colour)
        panel[_outline(mask)] = colour
        panels.append(panel.astype(np.uint8))
    gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    return np.kron(row, np.ones((scale, scale, 1), np.uint8))


def largest_slice_overlay(image: np.ndarray, gt: np.ndarray, preds: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Overlay rows (slice | ground truth | prediction), one per prediction, on the slice where ``gt`` is
    largest; arrays are sliced volumes [H, W, D] (slices last, as the model saw them). Shown with the
    first axis across and the second up (anterior / superior at the top). Returns (RGB, slice index)."""
    if not preds:
        raise ValueError("largest_slice_overlay needs at least one prediction")
    gt = np.asarray(gt).astype(bool)
    z = int(np.argmax(gt.reshape(-1, gt.shape[-1]).sum(0)))

    def view(a: np.ndarray) -> np.ndarray:
        return np.flipud(np.asarray(a)[..., z].T)

    rows = [overlay_panels(view(image), view(gt), view(np.asarray(p).astype(bool))) for p in preds]
    gap = np.full((6, rows[0].shape[1], 3), 255, np.uint8)
    stacked = rows[0]
    for row in rows[1:]:
        stacked = np.concatenate([stacked, gap, row], axis=0)
    return stacked, z


def box_plot_svg(
    groups: Mapping[str, Sequence[float]], title: str, ylabel: str = "Dice", lo: float = 0.0, hi: float = 1.0
) -> str:
    """An SVG box plot: one box per group (median, quartiles, whiskers at 1.5 IQR, outliers as dots)."""
    width, height, left, top, bottom = 90 + 80 * len(groups), 300, 50, 30, 60
    plot_h = height - top - bottom

    def y(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11"><title>{escape(title)}</title>',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
    ]
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        parts.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 5}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>'
        )
    parts.append(
        f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>'
    )
    for i, (name, values) in enumerate(groups.items()):
        cx = left + 40 + 80 * i
        colour = _COLOURS[i % len(_COLOURS)]
        parts.append(f'<text x="{cx}" y="{height - bottom + 16}" text-anchor="middle">{escape(name)}</text>')
        vals = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
        if not vals.size:
            continue
        q1, med, q3 = np.percentile(vals, [25, 50, 75])
        iqr = q3 - q1
        inside = vals[(vals >= q1 - 1.5 * iqr) & (vals <= q3 + 1.5 * iqr)]
        w_lo, w_hi = inside.min(), inside.max()
        parts.append(f'<line x1="{cx}" x2="{cx}" y1="{y(w_lo):.1f}" y2="{y(w_hi):.1f}" stroke="#333"/>')
        parts.append(
            f'<rect x="{cx - 20}" y="{y(q3):.1f}" width="40" height="{max(1.0, y(q1) - y(q3)):.1f}" '
            f'fill="{colour}" fill-opacity="0.6" stroke="#333"/>'
        )
        parts.append(
            f'<line x1="{cx - 20}" x2="{cx + 20}" y1="{y(med):.1f}" y2="{y(med):.1f}" stroke="#000" stroke-width="2"/>'
        )
        for v in vals[(vals < w_lo) | (vals > w_hi)]:
            parts.append(f'<circle cx="{cx}" cy="{y(v):.1f}" r="2.5" fill="none" stroke="#333"/>')
        parts.append(f'<text x="{cx}" y="{height - bottom + 30}" text-anchor="middle" fill="#555">n={vals.size}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
