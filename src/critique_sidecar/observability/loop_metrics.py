"""Prometheus counters, gauges and histograms for observations made on the event loop.

prometheus_client takes a lock per update (a histogram two: sum and bucket) and finds a bucket
with a Python loop; a metered request makes ~17 such updates and a streamed chunk one more
histogram observation, measured at ~6 us per chunk, about as much as metering the chunk
itself. These metrics are only ever updated from the event loop's thread (the core reports
through core.observe.Observer from there), so they need no lock: an update is an attribute
increment, a histogram's bucket a bisect. A scrape (the metrics server's thread) copies each
child's figures under the GIL; it may land between a histogram's bucket and sum updates and see
the sum one observation behind. Both stay monotonic, which is what rate() and
histogram_quantile() need. The exposition is prometheus_client's own (its metric families).

The API is the part of prometheus_client's that Metrics uses: `labels(*values)` returns a
child with inc()/dec() or observe()."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class GaugeChild(CounterChild):
    __slots__ = ()

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, the last for +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.sum += value


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


class _LoopMetric(Collector, Generic[C]):
    """A labelled metric whose children are plain objects; a counter or a gauge as it stands
    (its child's `value`), a histogram with LoopHistogram's overrides."""

    _child_type: type[C]
    _family_type: type[Metric]

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def labels(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> C:
        return self._child_type()  # type: ignore[call-arg]  # LoopHistogram passes its bounds

    def _add(self, family: Metric, values: list[str], child: C) -> None:
        family.add_metric(values, child.value)  # type: ignore[attr-defined]

    def collect(self) -> Iterable[Metric]:
        family = self._family_type(self._name, self._documentation, labels=self._labelnames)  # type: ignore[call-arg]
        for values, child in list(self._children.items()):
            self._add(family, list(values), child)
        yield family


class LoopCounter(_LoopMetric[CounterChild]):
    _child_type = CounterChild
    _family_type = CounterMetricFamily


class LoopGauge(_LoopMetric[GaugeChild]):
    _child_type = GaugeChild
    _family_type = GaugeMetricFamily


class LoopHistogram(_LoopMetric[HistogramChild]):
    _family_type = HistogramMetricFamily

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = tuple(sorted(buckets))
        self._bound_names = (*(floatToGoString(b) for b in self._bounds), "+Inf")  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def _add(self, family: Metric, values: list[str], child: HistogramChild) -> None:
        counts, total = child.counts.copy(), child.sum
        cumulative: list[tuple[str, float]] = []
        running = 0
        for name, count in zip(self._bound_names, counts, strict=True):
            running += count
            cumulative.append((name, running))
        family.add_metric(values, cumulative, total)  # type: ignore[attr-defined]
