"""SliceCache: the one store of per-slice tensors (frozen-front features, slice embeddings, decoded results)."""

from __future__ import annotations

import pytest
import torch

from monai_cbo.inferers import SliceResult
from monai_cbo.networks import SliceCache, feature_cache


def test_an_evicting_cache_drops_the_least_recently_used_past_its_bound():
    cache = SliceCache(max_mib=3 * 4 / 2**20)  # room for three 1-float32 entries
    for z in range(4):
        cache[z] = torch.zeros(1)
    assert 0 not in cache and len(cache) == 3 and cache.bytes == 12
    cache.get(1)
    cache[4] = torch.zeros(1)
    assert 1 in cache and 2 not in cache
    cache[4] = torch.zeros(1)  # stored again: counted once in the bound, twice in `stored`
    assert cache.bytes == 12 and cache.stored[4] == 2
    big = SliceCache(max_mib=4 / 2**20)
    big[0] = torch.zeros(10)  # one entry over the bound is kept: there is nothing older to drop
    assert len(big) == 1


def test_a_keeping_cache_stores_only_what_fits_and_computes_missing_entries_once():
    calls = []

    def compute(idx):
        calls.append(list(idx))
        return torch.stack([torch.full((256,), float(i)) for i in idx])  # 1 KiB each

    cache = feature_cache(max_mib=2 / 1024)  # room for two entries
    out = cache.get_many(["a", "b", "c"], compute, "cpu")
    assert calls == [[0, 1, 2]] and out[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert len(cache) == 2 and cache.bytes == 2048 and "c" not in cache  # the first ones stay
    out = cache.get_many(["b", "c", "a"], compute, "cpu")
    assert calls[-1] == [1] and out[:, 0].tolist() == [1.0, 1.0, 0.0]  # only "c" recomputed (as index 1)
    assert (cache.hits, cache.misses) == (2, 4)
    computed = torch.ones(2, 4)
    cache = feature_cache()
    cache["x"] = computed[0]
    computed[0] += 1  # an entry is a copy, not a view of the batch it came from
    assert cache["x"].tolist() == [1.0] * 4 and cache["x"].untyped_storage().nbytes() == 16


def test_records_of_tensors_count_their_tensors_bytes():
    result = SliceResult(torch.zeros(8, 8), 0.5, torch.zeros(4, 4))
    cache = SliceCache(None)
    cache["decoded"] = [result, result]
    assert cache.bytes == 2 * (64 + 16) * 4
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


def test_a_file_backed_cache_reads_its_file_and_writes_only_when_something_was_stored(tmp_path):
    path = tmp_path / "sub" / "case.pt"
    cache = SliceCache(None, path=path)
    cache.save()
    assert not path.exists()  # nothing stored, nothing written
    cache[3] = torch.arange(4.0)
    cache[7] = torch.ones(2)
    cache.save()
    assert set(torch.load(path, weights_only=True)) == {3, 7}  # a plain {key: tensor} file

    again = SliceCache(None, path=path)
    assert len(again) == 2 and torch.equal(again[3], torch.arange(4.0)) and not again.stored
    stamp = path.stat().st_mtime_ns
    again.save()
    assert path.stat().st_mtime_ns == stamp  # read back, nothing new: not rewritten
    again[8] = torch.zeros(1)
    again.save()
    assert set(torch.load(path, weights_only=True)) == {3, 7, 8}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_mib must be > 0"):
        SliceCache(0)
    with pytest.raises(ValueError, match="when_full"):
        SliceCache(when_full="drop")
