"""Which models the HTTP processes may send requests to straight (workers/direct.py): the
loaded, awake ones that take new requests, under each of their names. Worked out again after
every read of the supervisor's inbox in which the table changed, and told to each HTTP process
when it differs."""

from __future__ import annotations

from collections.abc import Callable

from router.control.table import Model
from router.messages import DirectRoute

Reader = Callable[[dict[str, DirectRoute]], None]


class DirectRoutesPublisher:
    def __init__(self, enabled: bool) -> None:
        """Not `enabled` (fake timing, whose holds are the supervisor's): no route at all."""
        self._enabled = enabled
        self._readers: list[Reader] = []
        self._routes: dict[str, DirectRoute] = {}
        self._version = -1  # of the table, when the routes were last worked out

    def subscribe(
        self, reader: Reader, models: dict[str, Model], names: dict[str, str]
    ) -> Callable[[], None]:
        """Call `reader` with the routes now and whenever they change; returns how to stop."""
        self._readers.append(reader)
        self.names_changed()
        if not self.refresh(models, names):
            reader(self._routes)
        return lambda: self._readers.remove(reader)

    def names_changed(self) -> None:
        self._version = -1

    def refresh(self, models: dict[str, Model], names: dict[str, str]) -> bool:
        """Tell the readers the routes if they changed; whether they did."""
        if not self._readers or not self._enabled:  # one HTTP process: nobody sends straight
            return False
        version = sum(model.version for model in models.values())
        if version == self._version:
            return False
        self._version = version
        routes = {
            name: DirectRoute(model.id, model.worker.pid, model.direct)
            for name, model_id in names.items()
            if (model := models[model_id]).ready and model.direct and model.worker
        }
        if routes == self._routes:
            return False
        self._routes = routes
        for reader in list(self._readers):
            reader(routes)
        return True
