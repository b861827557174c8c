"""The micro-batcher on its own: batch cutting, length grouping, admission control, cancellation, drain.

``predict_batch`` here is a plain function of the waveforms (its label encodes the waveform's length),
so each result can be checked against its own input; the model-backed path is tested in the API tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from service.batching import MicroBatcher
from service.errors import NotReadyError, OverloadedError
from shared.constants import EMOTIONS
from shared.predictor import Prediction


class Recorder:
    """predict_batch that records each batch's lengths; optionally blocks until released."""

    def __init__(self, *, block: bool = False, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.block = block
        self.fail_on = fail_on

    def __call__(self, waves: Sequence[np.ndarray]) -> list[Prediction]:
        self.started.set()
        if self.block:
            self.release.wait(10)
        lengths = [int(w.shape[0]) for w in waves]
        self.batches.append(lengths)
        if self.fail_on is not None and self.fail_on in lengths:
            raise ValueError(f"cannot embed a waveform of {self.fail_on} samples")
        return [self.predict(n) for n in lengths]

    @staticmethod
    def predict(n: int) -> Prediction:
        label = EMOTIONS[n % len(EMOTIONS)]
        return Prediction(label=label, confidence=1.0, probabilities={e: float(e == label) for e in EMOTIONS})


def wave(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.float32)


def test_each_result_belongs_to_its_own_input_and_batches_respect_the_size_limit() -> None:
    rec = Recorder(block=True)
    batcher = MicroBatcher(rec, max_batch_size=4, max_wait_s=0.0, queue_depth=64)
    try:
        first = batcher.submit_nowait(wave(1000))
        assert rec.started.wait(5)
        # While the first batch runs, 10 more queue up: they form sorted sub-batches of at most 4.
        lengths = [1600 + 7 * i for i in range(10)]
        futures = [batcher.submit_nowait(wave(n)) for n in lengths]
        rec.release.set()
        results = [f.result(5) for f in futures]
        assert first.result(5).prediction.label == Recorder.predict(1000).label
    finally:
        batcher.close()
    for n, res in zip(lengths, results, strict=True):
        assert res.prediction == Recorder.predict(n)
        assert res.batch_size == len(next(b for b in rec.batches if n in b))
    assert rec.batches[0] == [1000]
    assert [len(b) for b in rec.batches[1:]] == [4, 4, 2]
    assert all(b == sorted(b) for b in rec.batches)
    assert batcher.stats.items == 11 and batcher.stats.batches == 4


def test_items_of_very_different_lengths_are_not_padded_together() -> None:
    rec = Recorder(block=True)
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_s=0.0, queue_depth=64, length_ratio=2.0)
    try:
        blocker = batcher.submit_nowait(wave(10))
        assert rec.started.wait(5)
        lengths = [16000, 48000, 17000, 47000, 16500, 90000]
        futures = [batcher.submit_nowait(wave(n)) for n in lengths]
        rec.release.set()
        for f in [blocker, *futures]:
            f.result(5)
    finally:
        batcher.close()
    assert rec.batches[1:] == [[16000, 16500, 17000], [47000, 48000, 90000]]


def test_queue_full_raises_overloaded_instead_of_growing() -> None:
    rec = Recorder(block=True)
    batcher = MicroBatcher(rec, max_batch_size=2, max_wait_s=0.0, queue_depth=3)
    try:
        running = batcher.submit_nowait(wave(100))
        assert rec.started.wait(5)
        queued = [batcher.submit_nowait(wave(100 + i)) for i in range(3)]
        assert batcher.queue_size == 3
        with pytest.raises(OverloadedError, match="queue is full"):
            batcher.submit_nowait(wave(200))
        with pytest.raises(OverloadedError):
            batcher.check_capacity(1)
        batcher.check_capacity(0)
        rec.release.set()
        for f in [running, *queued]:
            f.result(5)
        assert batcher.stats.rejected_overloaded == 2
        batcher.submit_nowait(wave(300)).result(5)  # room again once the queue drained
    finally:
        batcher.close()


def test_reservations_admit_all_or_none_before_decoding_and_count_a_refusal_once() -> None:
    rec = Recorder(block=True)
    batcher = MicroBatcher(rec, max_batch_size=2, max_wait_s=0.0, queue_depth=4)
    try:
        running = batcher.submit_nowait(wave(100))
        assert rec.started.wait(5)
        with batcher.reserve(3) as slots:  # three uploads being decoded hold three places
            with pytest.raises(OverloadedError, match="queue is full"):
                batcher.reserve(2)  # all or none: there is room for one only
            assert batcher.stats.rejected_overloaded == 1
            one = batcher.reserve(1)
            with pytest.raises(OverloadedError):
                batcher.submit_nowait(wave(5))
            queued = [slots.submit_nowait(wave(200)), one.submit_nowait(wave(201))]
            slots.release()  # one upload could not be decoded: its place is free again
            queued.append(batcher.submit_nowait(wave(202)))
            with pytest.raises(RuntimeError, match="every reserved slot has been used"):
                one.submit_nowait(wave(9))
        assert batcher.stats.rejected_overloaded == 2
        rec.release.set()
        assert [f.result(5).prediction for f in [running, *queued]] == [
            Recorder.predict(n) for n in (100, 200, 201, 202)
        ]
        with batcher.reserve(4):  # the unused places of a finished request were given back
            pass
    finally:
        batcher.close()


def test_cancelled_requests_are_skipped() -> None:
    rec = Recorder(block=True)
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_s=0.0, queue_depth=16)
    try:
        running = batcher.submit_nowait(wave(100))
        assert rec.started.wait(5)
        gone = [batcher.submit_nowait(wave(5000 + i)) for i in range(3)]
        kept = batcher.submit_nowait(wave(7000))
        for f in gone:
            assert f.cancel()
        rec.release.set()
        running.result(5)
        assert kept.result(5).batch_size == 1
    finally:
        batcher.close()
    assert rec.batches == [[100], [7000]]
    assert batcher.stats.skipped_cancelled == 3


def test_a_cancelled_awaiting_task_skips_its_waveform() -> None:
    async def scenario() -> tuple[Recorder, MicroBatcher]:
        rec = Recorder(block=True)
        batcher = MicroBatcher(rec, max_batch_size=8, max_wait_s=0.0, queue_depth=16)
        running = asyncio.ensure_future(batcher.submit(wave(100)))
        await asyncio.to_thread(rec.started.wait, 5)
        abandoned = asyncio.ensure_future(batcher.submit(wave(4321)))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        await asyncio.sleep(0.01)
        rec.release.set()
        await running
        await asyncio.to_thread(batcher.close)
        return rec, batcher

    rec, batcher = asyncio.run(scenario())
    assert rec.batches == [[100]]
    assert batcher.stats.skipped_cancelled == 1


def test_a_failing_item_fails_alone() -> None:
    rec = Recorder(block=True, fail_on=3333)
    batcher = MicroBatcher(rec, max_batch_size=8, max_wait_s=0.0, queue_depth=16)
    try:
        running = batcher.submit_nowait(wave(3000))
        assert rec.started.wait(5)
        good = [batcher.submit_nowait(wave(n)) for n in (3100, 3200)]
        bad = batcher.submit_nowait(wave(3333))
        rec.release.set()
        running.result(5)
        assert [f.result(5).prediction for f in good] == [Recorder.predict(3100), Recorder.predict(3200)]
        with pytest.raises(ValueError, match="3333 samples"):
            bad.result(5)
    finally:
        batcher.close()
    # The batch of three failed, then each item was retried alone.
    assert rec.batches[1:] == [[3100, 3200, 3333], [3100], [3200], [3333]]
    assert batcher.stats.failed == 1


def test_close_drains_what_is_queued_then_refuses() -> None:
    rec = Recorder(block=True)
    batcher = MicroBatcher(rec, max_batch_size=2, max_wait_s=0.0, queue_depth=16)
    running = batcher.submit_nowait(wave(10))
    assert rec.started.wait(5)
    queued = [batcher.submit_nowait(wave(20 + i)) for i in range(5)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(NotReadyError, match="shutting down"):
        batcher.submit_nowait(wave(99))
    rec.release.set()
    closer.join(5)
    assert not closer.is_alive() and batcher.close(timeout=0)
    assert [f.result(0).prediction for f in [running, *queued]] == [
        Recorder.predict(n) for n in (10, 20, 21, 22, 23, 24)
    ]


def test_a_forming_batch_waits_only_for_reserved_waveforms() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=4, max_wait_s=5.0, queue_depth=16)
    try:
        # Nothing reserved: a lone waveform runs at once instead of waiting 5 s for company.
        start = time.perf_counter()
        batcher.submit_nowait(wave(100)).result(5)
        assert time.perf_counter() - start < 2.0
        # Two reserved: the first submitted waits for the second, and they share a batch.
        slots = batcher.reserve(2)
        first = slots.submit_nowait(wave(200))
        time.sleep(0.05)
        second = slots.submit_nowait(wave(210))
        assert first.result(5).batch_size == second.result(5).batch_size == 2
        # A released reservation stops the wait.
        slot = batcher.reserve(1)
        start = time.perf_counter()
        pending = batcher.submit_nowait(wave(300))
        slot.release()
        pending.result(5)
        assert time.perf_counter() - start < 2.0
    finally:
        batcher.close()
    assert rec.batches == [[100], [200, 210], [300]]


def test_the_warm_up_runs_on_the_serving_thread_before_any_batch() -> None:
    rec = Recorder()
    threads: list[str] = []
    release = threading.Event()

    def warmup() -> None:
        threads.append(threading.current_thread().name)
        release.wait(10)

    batcher = MicroBatcher(rec, max_batch_size=4, max_wait_s=0.0, warmup=warmup, name="ser-test-inference")
    try:
        early = batcher.submit_nowait(wave(1000))  # queued while warming up, served after
        time.sleep(0.05)
        assert not batcher.warmed_up.done() and rec.batches == []
        release.set()
        assert batcher.warmed_up.result(5) is None
        assert early.result(5).prediction == Recorder.predict(1000)
        assert threads == ["ser-test-inference"]
    finally:
        batcher.close()


def test_a_failed_warm_up_is_reported_and_admits_nothing() -> None:
    def warmup() -> None:
        raise RuntimeError("out of memory")

    batcher = MicroBatcher(Recorder(), warmup=warmup)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.warmed_up.result(5)
    with pytest.raises(NotReadyError):
        batcher.submit_nowait(wave(1000))
    assert batcher.close(drain=False, timeout=5)
