"""A micro-batcher: one dedicated thread owns the model; requests wait on their own futures.

How a batch is formed:

1. The inference thread waits for a first utterance, then up to ``max_wait_s`` for ``max_batch_size``
   of them (a batch is cut as soon as either is reached). It waits only while more utterances are
   reserved (admitted, their uploads still being decoded): a lone request is not held back for nothing.
2. It then takes everything already waiting, up to ``window`` utterances, sorts them by length and cuts
   them into sub-batches of at most ``max_batch_size`` whose longest item is at most ``length_ratio``
   times its shortest, so that padding wastes little.
3. Utterances whose future was cancelled (the client went away, or timed out) are skipped before the
   model runs. Each result is set on its own future; where a batch fails, its items are retried one at
   a time, so one bad utterance cannot fail the others.

Other model work (a long recording's regions, ``run_task``) runs on the same thread, one task between
two windows of batches, so a long analysis never holds single predictions back for more than one task.

Admission control: at most ``queue_depth`` utterances may be reserved or waiting. ``reserve(n)`` admits
``n`` utterances before they are decoded (one check, counted once if refused) and hands back a
``Reservation`` to submit them through; ``submit`` without a reservation checks for itself. Beyond the
depth both raise ``OverloadedError`` instead of letting the queue grow. ``close`` stops admission and, by
default, drains what is queued before the thread exits.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import NotReadyError, OverloadedError
from shared.predictor import Prediction

log = logging.getLogger(__name__)

PredictBatch = Callable[[Sequence[np.ndarray]], list[Prediction]]


@dataclass(frozen=True)
class BatchedPrediction:
    """One utterance's result with how it was served.

    Attributes:
        prediction: the model's output.
        queue_s: seconds between admission and the start of its batch.
        inference_s: seconds its batch took in the model.
        batch_size: how many utterances shared that batch.
    """

    prediction: Prediction
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Item:
    waveform: np.ndarray
    future: concurrent.futures.Future[BatchedPrediction]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    """Running totals since start."""

    batches: int = 0
    items: int = 0
    skipped_cancelled: int = 0
    rejected_overloaded: int = 0
    failed: int = 0


class MicroBatcher:
    """Runs ``predict_batch`` on a dedicated thread over batches of submitted waveforms.

    Args:
        predict_batch: called only on the batcher's thread, with waveforms float32 ``[n_samples]``;
            returns one prediction per waveform, in order.
        max_batch_size: most waveforms per call of ``predict_batch``.
        max_wait_s: how long to wait for a batch to fill once a first waveform is queued (seconds).
        queue_depth: most waveforms waiting; more are refused with ``OverloadedError``.
        window: most waveforms taken from the queue at once to be sorted by length
            (default ``4 * max_batch_size``).
        length_ratio: a sub-batch's longest waveform is at most this many times its shortest.
        on_batch: called on the batcher's thread after each batch with (size, seconds).
        warmup: run once on the batcher's thread before any batch; ``warmed_up`` completes when it has
            (or holds its exception, and the batcher then stops admitting). Warming up on the thread that
            serves keeps the memory the first batches allocate in one place instead of two.
    """

    def __init__(
        self,
        predict_batch: PredictBatch,
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        queue_depth: int = 64,
        window: int | None = None,
        length_ratio: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
        warmup: Callable[[], None] | None = None,
        name: str = "ser-inference",
    ) -> None:
        if max_batch_size < 1 or queue_depth < 1:
            raise ValueError("max_batch_size and queue_depth must be at least 1")
        self._predict_batch = predict_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.queue_depth = queue_depth
        self.window = max(max_batch_size, window or 4 * max_batch_size)
        self.length_ratio = max(1.0, length_ratio)
        self._on_batch = on_batch
        self._pending: collections.deque[_Item] = collections.deque()
        self._tasks: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            collections.deque()
        )
        self._cond = threading.Condition()
        self._accepting = True
        self._task_turn = False
        self._stopping = False
        self._drain = True
        self._reserved = 0
        self._warmup = warmup
        self.warmed_up: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- asyncio side ---------------------------------------------------------------------------

    @property
    def queue_size(self) -> int:
        """Waveforms waiting for the model (not counting the batch being run)."""
        return len(self._pending)

    @property
    def admitted(self) -> int:
        """Waveforms admitted and not yet taken into a batch: reserved (being decoded) or waiting; what
        ``queue_depth`` bounds."""
        return len(self._pending) + self._reserved

    def check_capacity(self, n: int = 1) -> None:
        """Raise now if ``n`` more waveforms would not be admitted (reserved ones count as admitted).

        Raises:
            NotReadyError: the batcher is closing. OverloadedError: the queue cannot take ``n`` more.
        """
        if not self._accepting:
            raise NotReadyError("the service is shutting down; retry on another instance")
        if len(self._pending) + self._reserved + n > self.queue_depth:
            self.stats.rejected_overloaded += 1
            raise OverloadedError(
                f"the inference queue is full ({self.queue_depth} utterances waiting); retry shortly"
            )

    def reserve(self, n: int) -> Reservation:
        """Admit ``n`` waveforms that are still on their way (being decoded), all or none.

        A forming batch waits for reserved waveforms; a slot not used must be given back
        (``Reservation.release``, or leaving its ``with`` block).

        Raises:
            NotReadyError, OverloadedError: see ``check_capacity``.
        """
        with self._cond:
            self.check_capacity(n)
            self._reserved += n
        return Reservation(self, n)

    def _unreserve(self, n: int) -> None:
        with self._cond:
            self._reserved = max(0, self._reserved - n)
            self._cond.notify_all()

    def _enqueue(
        self, waveform: np.ndarray, *, reserved: bool
    ) -> concurrent.futures.Future[BatchedPrediction]:
        future: concurrent.futures.Future[BatchedPrediction] = concurrent.futures.Future()
        with self._cond:
            try:
                if reserved:
                    self._reserved = max(0, self._reserved - 1)
                    if not self._accepting:
                        raise NotReadyError("the service is shutting down; retry on another instance")
                else:
                    self.check_capacity(1)
                self._pending.append(_Item(waveform, future))
            finally:
                self._cond.notify_all()
        return future

    def submit_nowait(self, waveform: np.ndarray) -> concurrent.futures.Future[BatchedPrediction]:
        """Queue one waveform; its result arrives on the returned (thread-safe) future.

        Cancelling the future before its batch starts removes the waveform from the batch.

        Raises:
            NotReadyError: the batcher is closing. OverloadedError: ``queue_depth`` waveforms are waiting.
        """
        return self._enqueue(waveform, reserved=False)

    async def submit(self, waveform: np.ndarray) -> BatchedPrediction:
        """Queue one waveform and wait for its result without blocking the event loop.

        If the awaiting task is cancelled, the waveform is skipped when its batch is formed.

        Raises:
            NotReadyError, OverloadedError (see ``submit_nowait``); whatever the model raised for it.
        """
        # wrap_future hands the result over with loop.call_soon_threadsafe and, when the awaiting
        # task is cancelled, cancels the concurrent future too, which is what the batcher checks.
        return await asyncio.wrap_future(self.submit_nowait(waveform))

    def run_task(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the inference thread (it may use the model), between two windows of batches.

        Tasks are not counted against ``queue_depth``: their callers bound them (one task in flight per
        analysis). Cancelling the future before the task starts skips it.

        Raises:
            NotReadyError: the batcher is closing.
        """
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if not self._accepting:
                raise NotReadyError("the service is shutting down; retry on another instance")
            self._tasks.append((fn, future))
            self._cond.notify_all()
        return future

    def close(self, *, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop admitting; run what is queued (``drain``) or cancel it; wait for the thread to end.

        Returns True when the thread has ended (False: still running after ``timeout`` seconds).
        Blocking: call it from a worker thread when on an event loop.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._drain = drain
            if not drain:
                while self._pending:
                    self._pending.popleft().future.cancel()
                while self._tasks:
                    self._tasks.popleft()[1].cancel()
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the inference thread -----------------------------------------------------------------

    def _take_window(self) -> list[_Item] | tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None:
        """The next work: a window of waiting utterances, or one task (they take turns); None: stop."""
        with self._cond:
            while not self._pending and not self._tasks and not self._stopping:
                self._cond.wait()
            if self._tasks and (self._task_turn or not self._pending):
                self._task_turn = False
                return self._tasks.popleft()
            self._task_turn = True
            if not self._pending:
                return None
            if not self._stopping and self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s
                while len(self._pending) < self.max_batch_size and self._reserved > 0 and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            n = min(len(self._pending), self.window)
            return [self._pending.popleft() for _ in range(n)]

    def _split(self, items: list[_Item]) -> list[list[_Item]]:
        items = sorted(items, key=lambda it: it.waveform.shape[0])
        batches: list[list[_Item]] = []
        for item in items:
            current = batches[-1] if batches else None
            if (
                current is not None
                and len(current) < self.max_batch_size
                and item.waveform.shape[0] <= self.length_ratio * max(1, current[0].waveform.shape[0])
            ):
                current.append(item)
            else:
                batches.append([item])
        return batches

    def _run(self) -> None:
        try:
            if self._warmup is not None:
                self._warmup()
        except BaseException as exc:
            with self._cond:
                self._accepting = False
            self.warmed_up.set_exception(exc)
            return
        self.warmed_up.set_result(None)
        while True:
            work = self._take_window()
            if work is None:
                return
            if isinstance(work, tuple):
                self._run_task(*work)
                continue
            for batch in self._split(work):
                self._run_batch(batch)

    @staticmethod
    def _run_task(fn: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    def _run_batch(self, batch: list[_Item]) -> None:
        # set_running_or_notify_cancel is False for a cancelled future: its client is gone.
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        self.stats.skipped_cancelled += len(batch) - len(live)
        if not live:
            return
        log.debug("starting a batch of %d", len(live))
        start = time.perf_counter()
        try:
            predictions = self._predict_batch([item.waveform for item in live])
            if len(predictions) != len(live):
                raise RuntimeError(
                    f"predict_batch returned {len(predictions)} results for {len(live)} inputs"
                )
        except Exception as exc:
            if len(live) == 1:
                self.stats.failed += 1
                live[0].future.set_exception(exc)
                return
            log.warning("a batch of %d failed (%s); retrying its items one by one", len(live), exc)
            for item in live:
                self._run_single(item)
            return
        elapsed = time.perf_counter() - start
        self._record(len(live), elapsed)
        for item, prediction in zip(live, predictions, strict=True):
            item.future.set_result(BatchedPrediction(prediction, start - item.enqueued, elapsed, len(live)))

    def _run_single(self, item: _Item) -> None:
        log.debug("starting a batch of 1")
        start = time.perf_counter()
        try:
            prediction = self._predict_batch([item.waveform])[0]
        except Exception as exc:
            self.stats.failed += 1
            item.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - start
        self._record(1, elapsed)
        item.future.set_result(BatchedPrediction(prediction, start - item.enqueued, elapsed, 1))

    def _record(self, size: int, seconds: float) -> None:
        self.stats.batches += 1
        self.stats.items += size
        if self._on_batch is not None:
            try:
                self._on_batch(size, seconds)
            except Exception:  # metrics must never break inference
                log.exception("on_batch callback failed")


class Reservation:
    """Admitted slots in a ``MicroBatcher``'s queue for waveforms still being decoded.

    Each ``submit`` uses one slot without a new capacity check; ``release`` gives unused ones back, and
    leaving the ``with`` block gives back whatever is left. Thread-safe as far as the batcher is.
    """

    def __init__(self, batcher: MicroBatcher, slots: int) -> None:
        self._batcher = batcher
        self._left = slots
        self._lock = threading.Lock()

    def _take(self) -> None:
        with self._lock:
            if self._left < 1:
                raise RuntimeError("every reserved slot has been used")
            self._left -= 1

    def submit_nowait(self, waveform: np.ndarray) -> concurrent.futures.Future[BatchedPrediction]:
        """Queue one reserved waveform (see ``MicroBatcher.submit_nowait``).

        Raises:
            NotReadyError: the batcher closed meanwhile.
        """
        self._take()
        return self._batcher._enqueue(waveform, reserved=True)

    async def submit(self, waveform: np.ndarray) -> BatchedPrediction:
        """Queue one reserved waveform and wait for its result (see ``MicroBatcher.submit``)."""
        return await asyncio.wrap_future(self.submit_nowait(waveform))

    def release(self, n: int = 1) -> None:
        """Give back ``n`` slots that will not be used (their uploads could not be decoded)."""
        with self._lock:
            n = min(n, self._left)
            self._left -= n
        if n:
            self._batcher._unreserve(n)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release(self._left)
