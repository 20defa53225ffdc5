"""One store for what is computed per slice and asked for again: :class:`SliceCache`.

Training, evaluation and inference all keep per-slice tensors to avoid computing them twice, and all through
this one class:

- the frozen front of the encoder (:func:`~monai_cbo.networks.frozen_prefix`), the same for the same slice in
  every training step, preset and seed (:func:`~monai_cbo.networks.cached_front`, used by the trainer's
  :class:`~monai_cbo.training.CachedFrontSegmenter` and by :class:`~monai_cbo.inferers.SliceWiseInferer`);
- the image embeddings of one volume, shared by every prompt source and class segmented on it
  (:meth:`~monai_cbo.inferers.SliceWiseInferer.encode`), optionally kept on disk between runs (the prompts
  bench encodes each volume once for a whole sweep);
- decoded results of repeated prompts (:class:`~monai_cbo.inferers.SliceWiseInferer`'s ``decode_memo``).

What differs between these uses is a setting, not a class: where entries are kept (``store_on``), what happens at
the memory bound (``when_full``) and whether the cache is backed by a file (``path``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from ..utils import check_option, write_atomic

__all__ = ["SliceCache"]

#: what a full cache does with a new entry: drop the least recently used ones, or not store the new one
WHEN_FULL = ("evict", "keep")


def _nbytes(value: Any) -> int:
    """Bytes of the tensors in ``value``: a tensor, or a tuple / list / dataclass of them (other fields: 0)."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if is_dataclass(value):
        value = [getattr(value, f.name) for f in fields(value)]
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    return 0


class SliceCache:
    """Per-slice tensors (or records of them) by hashable key, bounded in memory, optionally backed by a file.

    A slice embedding of LiteMedSAM or SAM ViT is 4 MiB (256 x 64 x 64 float32): the default 4096 MiB holds about
    1000 slices, every slice of a usual CT. ``stored`` counts how often each key was stored (entries read from
    ``path`` not counted), so a caller or a test sees recomputation; ``hits`` / ``misses`` count look-ups.

    Args:
        max_mib: memory bound in MiB; ``None``: unbounded.
        when_full: ``"evict"`` (default): past the bound the least recently used entries are dropped (one entry is
            always kept), the right policy for one volume's slices, visited in runs; ``"keep"``: an entry that does
            not fit is not stored and the stored ones stay, the right policy for training slices visited in
            passes (an LRU bound smaller than a pass would never hit).
        store_on: keep each entry as a copy on this device (``"cpu"``: GPU memory is left to the model);
            ``None`` (default): as given.
        path: a ``torch.save`` file of ``{key: tensor}`` read here when it exists and written by :meth:`save`
            (keys and tensors only, read with ``weights_only=True``).
        name: what the keys are slices of (e.g. a volume's name), under which a shared cache of their frozen-front
            features keys them (see :class:`~monai_cbo.inferers.SliceWiseInferer`); ``None``: not shared.

    Raises:
        ValueError: ``max_mib`` not positive, or an unknown ``when_full``.
    """

    def __init__(
        self,
        max_mib: float | None = 4096.0,
        when_full: str = "evict",
        store_on: str | torch.device | None = None,
        path: str | Path | None = None,
        name: Hashable | None = None,
    ) -> None:
        if max_mib is not None and max_mib <= 0:
            raise ValueError(f"max_mib must be > 0 or None (unbounded), got {max_mib}")
        check_option("when_full", when_full, WHEN_FULL)
        self.max_bytes = None if max_mib is None else int(max_mib * 2**20)
        self.when_full = when_full
        self.store_on = None if store_on is None else torch.device(store_on)
        self.path = None if path is None else Path(path)
        self.name = name
        self.bytes = 0
        self.hits = self.misses = 0
        self.stored: Counter[Hashable] = Counter()
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._unsaved = False
        if self.path is not None and self.path.exists():
            for key, value in torch.load(self.path, map_location=self.store_on, weights_only=True).items():
                self._put(key, value)
            self._unsaved = False

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The entry of ``key`` (now the most recently used), or ``default``."""
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return default
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def __getitem__(self, key: Hashable) -> Any:
        item = self.get(key)
        if item is None:
            raise KeyError(key)
        return item

    def __setitem__(self, key: Hashable, value: Any) -> None:
        if isinstance(value, torch.Tensor) and self.store_on is not None:
            value = value.detach().to(self.store_on, copy=True)
        if self._put(key, value):
            self.stored[key] += 1

    def _put(self, key: Hashable, value: Any) -> bool:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= _nbytes(old)
        size = _nbytes(value)
        if self.when_full == "keep" and self.max_bytes is not None and self.bytes + size > self.max_bytes:
            return False
        self._items[key] = value
        self.bytes += size
        self._unsaved = True
        while self.max_bytes is not None and self.bytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= _nbytes(dropped)
        return True

    def clear(self) -> None:
        """Drop every entry (the counts stay)."""
        self._items.clear()
        self.bytes = 0

    def get_many(
        self, keys: Sequence[Hashable], compute: Callable[[list[int]], torch.Tensor], device: torch.device | str
    ) -> torch.Tensor:
        """The entries of ``keys`` stacked on ``device``; ``compute(indices)`` makes the missing ones as one batch
        (indices into ``keys``), which are stored and handed out as computed (not as their stored copy)."""
        found = {i: self.get(k) for i, k in enumerate(keys)}  # taken before new entries may evict them
        missing = [i for i, item in found.items() if item is None]
        fresh = {}
        if missing:
            out = compute(missing).detach()
            for j, i in enumerate(missing):
                fresh[keys[i]] = out[j]
                self[keys[i]] = out[j]
        return torch.stack([fresh[k] if k in fresh else found[i].to(device) for i, k in enumerate(keys)])

    def save(self) -> None:
        """Write every entry to ``path`` (atomically) if any was stored since it was read or last written; a
        bounded cache writes what it holds."""
        if self.path is None or not self._unsaved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        items = dict(self._items)
        write_atomic(self.path, lambda p: torch.save(items, p), overwrite=True)
        self._unsaved = False
