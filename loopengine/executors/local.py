"""The local executor: a thread pool around the function a Ray task calls."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from loopengine.executors import remote
from loopengine.executors.remote import Work, WorkResult


class LocalExecutor:
    kind = "local"

    def __init__(self, jobs: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, jobs),
                                        thread_name_prefix="loopengine-measure")

    def submit(self, work: Work) -> Future[WorkResult]:
        return self._pool.submit(remote.measure, work)

    def cancel(self, future: Future[WorkResult]) -> None:
        future.cancel()  # a measurement under way finishes: its steps have timeouts

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
