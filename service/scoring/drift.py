"""Drift of what a model is asked to score: a rolling window of recent items tested against the card's references.

Every batch ``score_batch`` scores (``/log-likelihood``, ``/anomaly``, ``/v2/models/{name}/infer``) adds its items'
bits/dim and default-score p-values to the model's window: at most ``DRIFT_WINDOW`` items, none older than
``DRIFT_HORIZON_S``. The window reports its mean bits/dim, the fraction the default score flags at
``ANOMALY_FPR``, and a typicality p-value: ``|mean bits/dim of the window − H|`` with ``H`` the mean of the
``n`` reference bits/dim, as the batch typicality test of ``artifact.scores`` does.

Why not ``artifact.scores.bootstrap_typicality`` as it is: its null resamples ``M`` reference items around ``H``
itself, which treats ``H`` as exact. For a request of a few items that is harmless, but a window of ``M``
items is compared with an ``H`` measured on ``n`` items, and the difference of the two means has variance
``σ² (1/M + 1/n)``, not ``σ²/M``: with ``M/n = 1/2`` the one-sample null flags about 11 % of in-distribution
windows at 0.05 instead of 5 %. The null here is the two-sample one, ``|mean of M resampled references − mean of
n resampled references|``, seeded; its p-values are uniform over the draw of references and window (the same
marginal guarantee as the conformal p-values of ``artifact.scores``: for one fixed reference set the error of
``H`` is fixed too, and the share of flagged windows is a little above or below 5 %).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from artifact import scores
from service.core.metrics import Metrics
from service.scoring.references import References

SNAPSHOT_TTL_S = 1.0  # a Prometheus scrape reads four gauges: one computation serves them all


@dataclass(frozen=True)
class DriftSnapshot:
    """What a window says now.

    Attributes:
        items: items in the window.
        oldest_age_s: age of its oldest item (None when empty).
        mean_bits_per_dim: their mean bits/dim (NaN when empty).
        entropy: ``H``, the mean bits/dim of the reference items.
        statistic: ``|mean_bits_per_dim − H|``.
        p_value: the two-sample typicality p-value (NaN under 2 items).
        flag_rate: fraction of the items whose default-score p-value is ``≤ fpr`` (NaN when none has one).
        flagged_items: items with a default-score p-value.
        bootstrap_draws: draws of the null distribution.
    """

    items: int
    oldest_age_s: float | None
    mean_bits_per_dim: float
    entropy: float
    statistic: float
    p_value: float
    flag_rate: float
    flagged_items: int
    bootstrap_draws: int


class DriftWindow:
    """The recent items of one model.

    Args:
        reference_bits_per_dim: the card's reference bits/dim (``n ≥ 2``).
        capacity: most items kept (``DRIFT_WINDOW``).
        horizon_s: oldest item kept, seconds (``DRIFT_HORIZON_S``).
        fpr: the rate at which ``flag_rate`` counts an item flagged (``ANOMALY_FPR``).
        clock: seconds, monotonic (tests pass a fake one).
        draws: bootstrap draws of the null.
    """

    def __init__(
        self,
        reference_bits_per_dim: np.ndarray,
        capacity: int,
        horizon_s: float,
        fpr: float,
        clock: Callable[[], float] = time.monotonic,
        draws: int = scores.BOOTSTRAP_DRAWS,
    ) -> None:
        self.reference = np.asarray(reference_bits_per_dim, dtype=np.float64)
        if self.reference.size < 2:
            raise ValueError(f"expected at least 2 reference scores, got {self.reference.size}")
        self.capacity, self.horizon_s, self.fpr, self.clock, self.draws = capacity, horizon_s, fpr, clock, draws
        self.entropy = float(self.reference.mean())
        # (arrival time, bits/dim, default-score p-value or NaN) per item, oldest first
        self._items: deque[tuple[float, float, float]] = deque(maxlen=capacity)
        self._reference_means: np.ndarray | None = None
        self._window_means: tuple[int, np.ndarray] | None = None
        self._observed = 0
        self._snapshot: tuple[int, float, DriftSnapshot] | None = None

    def observe(self, bits_per_dim: np.ndarray, p_values: np.ndarray | None) -> None:
        """Add a scored batch: its bits/dim and, when the default score exists, its p-values."""
        now = self.clock()
        bits = np.asarray(bits_per_dim, dtype=np.float64).reshape(-1)
        p = np.full(bits.size, math.nan) if p_values is None else np.asarray(p_values, dtype=np.float64).reshape(-1)
        self._items.extend(zip([now] * bits.size, bits.tolist(), p.tolist(), strict=True))
        self._observed += bits.size

    def _expire(self, now: float) -> None:
        while self._items and now - self._items[0][0] > self.horizon_s:
            self._items.popleft()

    def _null(self, size: int) -> np.ndarray:
        """``|mean of size resampled references − mean of n resampled references|``, ``(draws,)``, seeded."""
        if self._reference_means is None:  # the n-item side does not depend on the window: drawn once
            generator = np.random.default_rng([scores.BOOTSTRAP_SEED, 1])
            self._reference_means = _resampled_means(generator, self.reference, self.reference.size, self.draws)
        if self._window_means is None or self._window_means[0] != size:
            generator = np.random.default_rng([scores.BOOTSTRAP_SEED, 2])  # a stream of its own: independent sides
            self._window_means = (size, _resampled_means(generator, self.reference, size, self.draws))
        return np.abs(self._window_means[1] - self._reference_means)

    def snapshot(self) -> DriftSnapshot:
        """The window now (recomputed at most once per ``SNAPSHOT_TTL_S`` unless items arrived)."""
        now = self.clock()
        cached = self._snapshot
        if cached is not None and cached[0] == self._observed and now - cached[1] < SNAPSHOT_TTL_S:
            return cached[2]
        self._expire(now)
        size = len(self._items)
        bits = np.fromiter((item[1] for item in self._items), dtype=np.float64, count=size)
        p = np.fromiter((item[2] for item in self._items), dtype=np.float64, count=size)
        mean = float(bits.mean()) if size else math.nan
        statistic = abs(mean - self.entropy) if size else math.nan
        p_value = math.nan
        if size >= 2:
            p_value = float(scores.calibrate(np.array([statistic]), self._null(size), 0.5).p_value[0])
        known = p[~np.isnan(p)]
        snapshot = DriftSnapshot(
            items=size,
            oldest_age_s=now - self._items[0][0] if size else None,
            mean_bits_per_dim=mean,
            entropy=self.entropy,
            statistic=statistic,
            p_value=p_value,
            flag_rate=float((known <= self.fpr).mean()) if known.size else math.nan,
            flagged_items=int(known.size),
            bootstrap_draws=self.draws,
        )
        self._snapshot = (self._observed, now, snapshot)
        return snapshot


def _resampled_means(generator: np.random.Generator, values: np.ndarray, size: int, draws: int) -> np.ndarray:
    """Means of ``draws`` resamples (with replacement) of ``size`` of ``values``, in blocks of bounded memory."""
    means = np.empty(draws, dtype=np.float64)
    block = max(1, 2**20 // max(size, 1))
    for start in range(0, draws, block):
        stop = min(start + block, draws)
        means[start:stop] = values[generator.integers(0, values.size, size=(stop - start, size))].mean(axis=1)
    return means


class DriftMonitor:
    """The drift windows of one app's models, created on a model's first use, and their gauges.

    A window lives on the model's ``References`` (``References.drift``), so ``score_batch`` feeds it without knowing
    about routes, and a model loaded anew (new references) starts a fresh window.

    Args:
        capacity: ``DRIFT_WINDOW``.
        horizon_s: ``DRIFT_HORIZON_S``.
        fpr: ``ANOMALY_FPR``.
        metrics: where the gauges are.
    """

    def __init__(self, capacity: int, horizon_s: float, fpr: float, metrics: Metrics) -> None:
        self.capacity, self.horizon_s, self.fpr, self.metrics = capacity, horizon_s, fpr, metrics
        self._published: dict[str, DriftWindow] = {}  # model name → the window its gauges read

    def attach(self, name: str, references: References | None, publish: bool = True) -> DriftWindow | None:
        """The window of model ``name`` (made on first use), or None when its card has no reference scores.

        Args:
            name: the model's name, the gauges' label.
            references: those of the version a request uses.
            publish: point the model's gauges at this window (the version answering unpinned requests); a
                pinned older version keeps a window of its own that the gauges do not show.
        """
        if references is None or references.bits_per_dim.size < 2:
            return None
        if references.drift is None:
            references.drift = DriftWindow(references.bits_per_dim, self.capacity, self.horizon_s, self.fpr)
        window = references.drift
        if publish and self._published.get(name) is not window:
            self._published[name] = window
            # read at scrape time: the p-value is only computed when someone looks
            self.metrics.drift_items.labels(model=name).set_function(lambda: window.snapshot().items)
            self.metrics.drift_p_value.labels(model=name).set_function(lambda: window.snapshot().p_value)
            self.metrics.drift_bits_per_dim.labels(model=name).set_function(lambda: window.snapshot().mean_bits_per_dim)
            self.metrics.drift_flag_rate.labels(model=name).set_function(lambda: window.snapshot().flag_rate)
        return window

    def forget(self, name: str) -> None:
        """Drop model ``name``'s gauges: the model was removed, or another version now answers it.

        A replacement's window is published on its first use; until then the model has no drift series (rather
        than the old version's figures under the model's name).
        """
        if self._published.pop(name, None) is None:
            return
        for gauge in (
            self.metrics.drift_items,
            self.metrics.drift_p_value,
            self.metrics.drift_bits_per_dim,
            self.metrics.drift_flag_rate,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
