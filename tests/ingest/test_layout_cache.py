"""The decoder's layout cache stops storing while nothing it stores is asked for again, and
stores again once a stream repeats itself."""

from ingest import layoutcache
from ingest.layoutcache import SelfLimitingCache


def test_a_repeating_stream_is_kept_and_found():
    cache: SelfLimitingCache[int] = SelfLimitingCache(100)
    hits = 0
    for n in range(20 * layoutcache.WINDOW):
        key = n % 50
        found = cache.get(key)
        if found is None:
            cache.put(key, key)
        else:
            hits += 1
            assert found == key
    assert cache.storing and len(cache) == 50 and hits == 20 * layoutcache.WINDOW - 50


def test_a_stream_that_never_repeats_stops_filling_it_then_one_that_repeats_fills_it_again():
    cache: SelfLimitingCache[int] = SelfLimitingCache(4096)
    for n in range(layoutcache.WINDOW):
        assert cache.get(("new", n)) is None
        cache.put(("new", n), n)
    assert not cache.storing
    size = len(cache)
    for n in range(4 * layoutcache.WINDOW):
        assert cache.get(("newer", n)) is None
        cache.put(("newer", n), n)
    # Only a sample of what never comes back is stored.
    assert len(cache) - size <= 4 * layoutcache.WINDOW // layoutcache.SAMPLE + 1
    hits = 0
    for n in range(6 * layoutcache.WINDOW):  # now 40 sequences over and over
        key = ("again", n % 40)
        found = cache.get(key)
        hits += found is not None
        if found is None:
            cache.put(key, n % 40)
    assert cache.storing and hits > 5 * layoutcache.WINDOW


def test_a_full_cache_starts_again():
    cache: SelfLimitingCache[int] = SelfLimitingCache(3)
    for n in range(4):
        cache.put(n, n)
    assert len(cache) == 1 and cache.get(3) == 3
