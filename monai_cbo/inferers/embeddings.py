"""A per-volume store of slice embeddings, bounded in memory, so that every prompt source shares one encoding."""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """Slice embeddings of one volume by slice index, least recently used evicted past ``max_mib``.

    One cache per volume, owned by the caller and passed to every :class:`SliceWiseInferer` call on that volume
    (per-slice prompts, every class's propagation, refinement), so each slice is encoded once. A LiteMedSAM or
    SAM ViT embedding is 4 MiB (256 x 64 x 64 float32): the default 4096 MiB holds about 1000 slices, every
    slice of a usual CT. Past the bound the least recently used embedding is dropped and encoded again if
    asked for; ``encoded`` counts how often each slice was stored, so a caller (or a test) can see re-encoding.

    Args:
        max_mib: memory bound in MiB; ``None``: unbounded.
    """

    def __init__(self, max_mib: float | None = 4096.0) -> None:
        if max_mib is not None and max_mib <= 0:
            raise ValueError(f"max_mib must be > 0 or None (unbounded), got {max_mib}")
        self.max_bytes = None if max_mib is None else int(max_mib * 2**20)
        self._items: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.encoded: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, z: object) -> bool:
        return z in self._items

    def get(self, z: int, default: torch.Tensor | None = None) -> torch.Tensor | None:
        item = self._items.get(z)
        if item is None:
            return default
        self._items.move_to_end(z)
        return item

    def __getitem__(self, z: int) -> torch.Tensor:
        item = self.get(z)
        if item is None:
            raise KeyError(z)
        return item

    def __setitem__(self, z: int, embedding: torch.Tensor) -> None:
        old = self._items.pop(z, None)
        if old is not None:
            self.bytes -= old.nelement() * old.element_size()
        self._items[z] = embedding
        self.bytes += embedding.nelement() * embedding.element_size()
        self.encoded[z] += 1
        while self.max_bytes is not None and self.bytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.nelement() * dropped.element_size()
