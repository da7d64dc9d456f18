"""Translation routes through a graph of language pairs: pure logic, no I/O.

Apertium ships pairs, not a model per language: English reaches Portuguese only
through Spanish. ``PairGraph`` finds, for a source and a target, the shortest chain of
installed pairs (a direct pair always wins), capped at ``max_hops``. Among chains of
equal length the one through the alphabetically first pivot wins, so a route never
depends on the order pairs were found in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Route = tuple[str, ...]
"""The languages a text passes through, source first, target last: ``("en", "es",
"pt")`` is English to Portuguese through Spanish, two hops."""


class PairGraph:
    """Shortest routes between languages over directed pairs, at most ``max_hops`` long.

    Routes are computed once, at construction (a breadth-first search from each
    source): a few dozen pairs make a few hundred routes.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]], *, max_hops: int = 2) -> None:
        """``pairs``: the directions available, ``(source, target)``; ``max_hops`` of
        at least 1 (``ValueError`` otherwise)."""
        if max_hops < 1:
            raise ValueError(f"max_hops must be at least 1, got {max_hops}")
        self.max_hops = max_hops
        self._next: dict[str, list[str]] = {}
        for source, target in sorted(set(pairs)):
            if source != target:
                self._next.setdefault(source, []).append(target)
        self._routes = {source: self._search(source) for source in self._next}

    def _search(self, source: str) -> dict[str, Route]:
        routes: dict[str, Route] = {}
        frontier: list[Route] = [(source,)]
        for _ in range(self.max_hops):
            reached: list[Route] = []
            for route in frontier:
                for target in self._next.get(route[-1], ()):
                    if target != source and target not in routes:
                        routes[target] = (*route, target)
                        reached.append(routes[target])
            frontier = reached
        return routes

    def sources(self) -> frozenset[str]:
        """Languages some pair translates from."""
        return frozenset(self._routes)

    def targets(self, source: str) -> frozenset[str]:
        """Languages reachable from ``source`` within ``max_hops``."""
        return frozenset(self._routes.get(source, ()))

    def route(self, source: str, target: str) -> Route | None:
        """The route from ``source`` to ``target``; None when none is short enough."""
        return self._routes.get(source, {}).get(target)

    def routes(self, source: str) -> Mapping[str, Route]:
        """Every route from ``source``, by target."""
        return dict(self._routes.get(source, {}))
