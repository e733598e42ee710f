"""The ``--workers N`` supervisor's part of hot reload: forward SIGHUP to every worker.

Kept apart from :mod:`proxy.routing.reload` because the supervisor must not import :mod:`proxy.metrics`: in
multiprocess mode every process that declares the metrics writes its own value files, and the supervisor
serves no requests.
"""

from __future__ import annotations

import logging
import os
import signal

from uvicorn.supervisors import Multiprocess

log = logging.getLogger("route_llm")

#: Set by the CLI for its workers: a worker that takes POST /admin/reload signals this pid.
SUPERVISOR_ENV = "ROUTE_LLM_SUPERVISOR_PID"


def reloading(base: type[Multiprocess]) -> type[Multiprocess]:
    """uvicorn's supervisor (``base``) with SIGHUP forwarded to every worker.

    uvicorn restarts every worker on SIGHUP; here each is asked to reload in place instead, so connections and
    requests in flight stay where they are and a bad model leaves every worker serving. A factory rather than a
    subclass at import, so the class it extends is the one ``uvicorn.supervisors`` holds when the server starts.
    """

    class ReloadingMultiprocess(base):  # type: ignore[valid-type,misc]
        def handle_hup(self) -> None:
            log.info("SIGHUP: asking %d workers to reload the router", len(self.processes))
            for process in self.processes:
                if process.pid is not None:
                    try:
                        os.kill(process.pid, signal.SIGHUP)
                    except ProcessLookupError:  # a worker that just died; the supervisor replaces it
                        pass

    return ReloadingMultiprocess
