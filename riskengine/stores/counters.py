"""The per-IP sign-in windows and the population counts, as the memory store keeps them; training's
point-in-time pass (lab/partitions.py) keeps them with the same code, so both count alike."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Hashable, Mapping

from riskengine.features import GlobalCount, IpActivity
from riskengine.stores.base import IP_WINDOW_S, prune_before


class IpWindows:
    """Each IP's recent sign-ins, ``(at, user_key, ok)``: what credential-stuffing signals count."""

    def __init__(self) -> None:
        self._ips: dict[Hashable, deque[tuple[float, Hashable, bool]]] = defaultdict(deque)

    def activity(self, ip: Hashable, at: float) -> IpActivity:
        """Failures and distinct users from ``ip`` in the window before ``at`` (``at`` included)."""
        recent = [(t, u, ok) for t, u, ok in self._ips.get(ip, ()) if at - IP_WINDOW_S < t <= at]
        return IpActivity(sum(1 for _, _, ok in recent if not ok), len({u for _, u, _ in recent}))

    def add(self, ip: Hashable, at: float, user_key: Hashable, ok: bool) -> None:
        window = self._ips[ip]
        window.append((at, user_key, ok))
        horizon = prune_before(at)
        while window and window[0][0] < horizon:
            window.popleft()

    def forget(self, user_key: Hashable) -> None:
        for ip, window in self._ips.items():
            self._ips[ip] = deque(w for w in window if w[1] != user_key)


class PopulationCounts:
    """How often each learned attribute value was seen, and each attribute's total and distinct values."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, Hashable], float] = defaultdict(float)
        self._totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def read(self, values: Mapping[str, Hashable]) -> dict[str, GlobalCount]:
        return {a: GlobalCount(self._counts.get((a, v), 0.0), *self._totals.get(a, (0.0, 0.0)))
                for a, v in values.items()}

    def count(self, values: Mapping[str, Hashable]) -> None:
        for attribute, value in values.items():
            self._counts[(attribute, value)] += 1
            totals = self._totals[attribute]
            totals[0] += 1
            totals[1] += self._counts[(attribute, value)] == 1
