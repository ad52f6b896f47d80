"""Bounded summaries of a stream for telemetry windows: a uniform sample and a log histogram.

A window keeps every count exactly, but values it needs whole (regression outputs for quantiles,
inputs for drift) only up to a bound; past it, a :class:`Reservoir` keeps a uniform random
sample of everything offered, and a :class:`RowSample` a uniform sample of input rows in tables
allocated once. Latencies go into a :class:`LogHistogram` instead: every request
counts, in fixed memory, and a percentile is off by at most half a bucket (1 %).
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Generic, Mapping, Optional, Sequence, TypeVar, Union

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
        "filled",
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
        self.filled = 0
        """Slots holding an item (``len(items)`` for a reservoir of items)."""
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
        slot = self.slot(self.seen)
        if slot is None:
            return
        if slot == len(self.items):
            self.items.append(make())
        else:
            self.items[slot] = make()

    def slot(self, position: int) -> Optional[int]:
        """The item at ``position`` (1-based, ``== next``) is a candidate: the slot (0 to k-1)
        it is kept in, replacing what was there, or None when it is not kept. Slots fill in
        order, so ``filled`` of them hold items."""
        self.next = position + self._geometric(self._log_skip)
        self._candidates += 1
        if self._candidates < self._keep_at:
            return None
        k = self._k
        if self.filled < k:
            slot = self.filled
            self.filled += 1
            if self.filled < k:
                self._keep_at += 1
                return slot
        else:
            slot = self._rng.randrange(k)
            self._w *= math.exp(math.log(self._uniform()) / k)
        gap = 1 if self._w >= 1.0 else self._geometric(math.log1p(-self._w))
        self._keep_at = self._candidates + gap
        return slot

    def offer(self, item: T) -> None:
        """Offer one item (the inlined hot path above, as a method)."""
        self.seen += 1
        if self.seen >= self.next:
            self.candidate(lambda: item)


MAX_SAMPLE_CELLS = 1 << 20
"""Most values a :class:`RowSample` holds (rows times the columns of all its inputs): 4 MB of
float32 inputs. Wide inputs get fewer rows."""


class RowSample(Reservoir[None]):
    """A uniform random sample of the rows of the requests offered, for their 1-D and 2-D
    numeric inputs, written into one table per input allocated when the sample is made.

    A kept row is copied into its slot of each table: the request path allocates nothing, and
    nothing it allocated is held (thousands of small long-lived copies among a request's
    short-lived arrays slowed every request). Inputs that are not 1-D or 2-D numbers are not
    sampled; an input whose width, dtype or row count changes from the first request's is
    dropped from the sample. Rows are offered a request at a time, inlined by callers::

        s.seen += rows
        if s.seen >= s.next:
            s.take(feeds, rows)
    """

    __slots__ = ("tables",)

    def __init__(self, tables: dict[str, Optional[np.ndarray]], rng: random.Random, thin: int = 1):
        rows = min((t.shape[0] for t in tables.values() if t is not None), default=1)
        super().__init__(max(1, rows), rng, thin)
        self.tables = tables
        """Input name → its table (rows by columns), or None once the input is dropped."""

    @classmethod
    def like(
        cls,
        feeds: Mapping[str, Any],
        rows: int,
        rng: random.Random,
        thin: int = 1,
        max_cells: int = MAX_SAMPLE_CELLS,
    ) -> RowSample:
        """A sample of at most ``rows`` rows (fewer when the inputs are wide) for requests
        shaped like ``feeds``."""
        shapes = {}
        for name, value in feeds.items():
            numeric = isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
            if numeric and value.ndim in (1, 2):
                shapes[name] = (1 if value.ndim == 1 else value.shape[1], value.dtype)
        width = sum(w for w, _ in shapes.values())
        rows = max(1, min(rows, max_cells // max(1, width)))
        tables: dict[str, Optional[np.ndarray]] = {
            name: np.empty((rows, w), dtype=np.float32 if dt == np.float32 else np.float64)
            for name, (w, dt) in shapes.items()
        }
        return cls(tables, rng, thin)

    def take(self, feeds: Mapping[str, Any], rows: int) -> None:
        """The request just counted into ``seen`` (``rows`` rows) holds candidates: keep them."""
        first = self.seen - rows  # rows of this request are positions first+1 .. seen
        while self.next <= self.seen:
            row = self.next - first - 1
            slot = self.slot(self.next)
            if slot is not None:
                self._write(feeds, row, slot)

    def _write(self, feeds: Mapping[str, Any], row: int, slot: int) -> None:
        tables = self.tables
        for name, table in tables.items():
            if table is None:
                continue
            value = feeds.get(name)
            if (
                not isinstance(value, np.ndarray)
                or value.ndim not in (1, 2)
                or row >= value.shape[0]
                or (value.shape[1] if value.ndim == 2 else 1) != table.shape[1]
                or value.dtype.kind not in "biuf"
            ):
                tables[name] = None
                continue
            table[slot] = value[row]

    def sampled(self) -> dict[str, np.ndarray]:
        """The kept rows of every input still sampled, as float64 tables (rows by columns)."""
        return {
            name: table[: self.filled].astype(np.float64)
            for name, table in self.tables.items()
            if table is not None and self.filled
        }


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
