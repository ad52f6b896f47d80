"""Bounded summaries of a stream for telemetry windows: a uniform sample and a log histogram.

A window keeps every count exactly, but values it needs whole (regression outputs for quantiles,
inputs for drift) only up to a bound; past it, a :class:`Reservoir` keeps a uniform random
sample of everything offered. Latencies go into a :class:`LogHistogram` instead: every request
counts, in fixed memory, and a percentile is off by at most half a bucket (1 %).
"""

from __future__ import annotations

import math
import random
from typing import Generic, Sequence, TypeVar, Union

import numpy as np

T = TypeVar("T")


class Reservoir(Generic[T]):
    """A uniform random sample of at most ``k`` of the items offered (Algorithm L, Li 1994).

    The first ``k`` items are kept. After that the position of the next item to keep is drawn
    ahead (a geometric jump), so an item that is not kept costs one comparison and no random
    number. The hot path is inlined by callers::

        r.seen += 1
        if r.seen >= r.next:
            r.keep(make_item())
    """

    __slots__ = ("_k", "_rng", "_w", "items", "next", "seen")

    def __init__(self, k: int, rng: random.Random) -> None:
        if k < 1:
            raise ValueError("a reservoir holds at least one item")
        self._k, self._rng = k, rng
        self.items: list[T] = []
        self.seen = 0
        """Items offered so far."""
        self.next = 1
        """Position (1-based, among everything offered) of the next item to keep."""
        self._w = math.exp(math.log(self._uniform()) / k)

    def _uniform(self) -> float:
        return 1.0 - self._rng.random()  # in (0, 1]: safe to take the logarithm of

    def keep(self, item: T) -> None:
        """Store the item offered last (call it only when ``seen >= next``)."""
        k = self._k
        if len(self.items) < k:
            self.items.append(item)
            if len(self.items) < k:
                self.next = self.seen + 1
                return
        else:
            self.items[self._rng.randrange(k)] = item
            self._w *= math.exp(math.log(self._uniform()) / k)
        gap = 1 if self._w >= 1.0 else int(math.log(self._uniform()) / math.log1p(-self._w)) + 1
        self.next = self.seen + gap

    def offer(self, item: T) -> None:
        """Offer one item (the inlined hot path above, as a method)."""
        self.seen += 1
        if self.seen >= self.next:
            self.keep(item)


class LogHistogram:
    """Counts of positive values (seconds, say) in buckets whose bounds grow by ``growth``.

    Values below ``low`` count in an underflow bucket, above ``high`` in an overflow bucket.
    A percentile is reported as the geometric middle of its bucket, so within ``(growth - 1) / 2``
    of the true value (1 % by default) between ``low`` and ``high``; ``max`` is exact.
    """

    def __init__(self, low: float = 1e-6, high: float = 1e3, growth: float = 1.02) -> None:
        if not 0 < low < high or growth <= 1:
            raise ValueError("need 0 < low < high and growth > 1")
        self.low, self.growth = low, growth
        self._log_low, self._scale = math.log(low), 1.0 / math.log(growth)
        self.buckets = math.ceil(math.log(high / low) * self._scale) + 2
        self.counts = np.zeros(self.buckets, dtype=np.int64)
        self.count = 0
        self.max = 0.0

    def add(self, values: Union[Sequence[float], np.ndarray]) -> None:
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            return
        logs = np.log(np.maximum(array, self.low * 1e-3))
        index = np.floor((logs - self._log_low) * self._scale).astype(np.int64) + 1
        np.clip(index, 0, self.buckets - 1, out=index)
        self.counts += np.bincount(index, minlength=self.buckets)
        self.count += int(array.size)
        self.max = max(self.max, float(array.max()))

    def percentile(self, q: float) -> float:
        """The nearest-rank ``q``-th percentile (0 < q <= 100) as its bucket's geometric middle;
        raises ValueError when nothing was added."""
        if not self.count:
            raise ValueError("an empty histogram has no percentiles")
        rank = max(1, math.ceil(q / 100 * self.count))
        if rank >= self.count:
            return self.max
        bucket = int(np.searchsorted(np.cumsum(self.counts), rank))
        if bucket == 0:
            return min(self.low, self.max)
        if bucket == self.buckets - 1:
            return self.max
        return min(self.max, self.low * math.pow(self.growth, bucket - 0.5))
