"""Bounded summaries of a stream for telemetry windows: a uniform sample and a log histogram.

A window keeps every count exactly, but values it needs whole (regression outputs for quantiles,
inputs for drift) only up to a bound; past it, a :class:`Reservoir` keeps a uniform random
sample of everything offered. Latencies go into a :class:`LogHistogram` instead: every request
counts, in fixed memory, and a percentile is off by at most half a bucket (1 %).
"""

from __future__ import annotations

import math
import random
from typing import Callable, Generic, Sequence, TypeVar, Union

import numpy as np

T = TypeVar("T")


class Reservoir(Generic[T]):
    """A uniform random sample of at most ``k`` of the items offered.

    Two stages, each drawing the position of its next pick ahead so that an item not picked
    costs one comparison and no random number:

    - thinning: each item becomes a candidate with probability ``1 / thin`` (geometric gaps);
    - Algorithm L (Li, 1994) over the candidates: the first ``k`` are kept, then each later one
      replaces a random kept item with the right, falling probability.

    Thinning keeps the work at about ``k`` picks per window when the caller knows roughly how
    many items will come (``thin`` ≈ expected items / k); a uniform sample of a uniform thinning
    is still uniform. The hot path is inlined by callers::

        r.seen += 1
        if r.seen >= r.next:
            r.candidate(lambda: make_item())
    """

    __slots__ = (
        "_candidates",
        "_k",
        "_keep_at",
        "_log_skip",
        "_rng",
        "_w",
        "items",
        "next",
        "seen",
    )

    def __init__(self, k: int, rng: random.Random, thin: int = 1) -> None:
        if k < 1 or thin < 1:
            raise ValueError("a reservoir holds at least one item, thinned by at least 1")
        self._k, self._rng = k, rng
        self._log_skip = math.log1p(-1.0 / thin) if thin > 1 else 0.0
        self.items: list[T] = []
        self.seen = 0
        """Items offered so far."""
        self.next = 1
        """Position (1-based, among everything offered) of the next candidate."""
        self._candidates = 0
        self._keep_at = 1
        """Position among the candidates of the next one to keep."""
        self._w = math.exp(math.log(self._uniform()) / k)

    def _uniform(self) -> float:
        return 1.0 - self._rng.random()  # in (0, 1]: safe to take the logarithm of

    def _geometric(self, log_q: float) -> int:
        """Trials until the first success, for a failure probability of exp(log_q)."""
        if log_q == 0.0:
            return 1
        return int(math.log(self._uniform()) / log_q) + 1

    def candidate(self, make: Callable[[], T]) -> None:
        """The item offered last is a candidate (call it only when ``seen >= next``); ``make``
        builds what is stored, and is called only if it is kept."""
        self.next = self.seen + self._geometric(self._log_skip)
        self._candidates += 1
        if self._candidates < self._keep_at:
            return
        k = self._k
        if len(self.items) < k:
            self.items.append(make())
            if len(self.items) < k:
                self._keep_at += 1
                return
        else:
            self.items[self._rng.randrange(k)] = make()
            self._w *= math.exp(math.log(self._uniform()) / k)
        gap = 1 if self._w >= 1.0 else self._geometric(math.log1p(-self._w))
        self._keep_at = self._candidates + gap

    def offer(self, item: T) -> None:
        """Offer one item (the inlined hot path above, as a method)."""
        self.seen += 1
        if self.seen >= self.next:
            self.candidate(lambda: item)


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
