"""A three-stage pipeline with bounded queues: decode (a thread) -> inference (the calling thread) -> encode (a
thread), so that reading the next item and writing the previous one overlap with the runtime's work.

* Memory: at most ``depth`` items wait between two stages (plus one in each stage), whatever the input's length.
* Order: items reach the encoder in the order the decoder produced them (one thread per stage, FIFO queues).
* Inference runs in the caller's thread: the runtime keeps its own threads busy, and Ctrl-C (KeyboardInterrupt,
  delivered to the main thread only) stops the pipeline where it is.
* Failure: the first exception in any stage (or KeyboardInterrupt) stops all three, the other threads are joined,
  and it is raised to the caller; nothing keeps running in the background. A failure in inference first lets the
  encoder write the results already handed to it (Ctrl-C does not wait for that).
* Accounting: :class:`PipelineStats` says how long each stage was busy and how long inference waited for the
  decoder (input starved) or for the encoder (output blocked): where the time that is not inference goes.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, List, TypeVar

T = TypeVar("T")
U = TypeVar("U")

_END = object()
POLL_S = 0.05  # how often a blocked stage looks whether another one failed


@dataclass
class PipelineStats:
    items: int = 0
    decode_s: float = 0.0  # time spent producing items (decoding, colour conversion)
    infer_s: float = 0.0  # time spent in ``work`` (inference)
    encode_s: float = 0.0  # time spent in ``sink`` (conversion, encoding, writing)
    starved_s: float = 0.0  # inference waiting for the decoder
    blocked_s: float = 0.0  # inference waiting for room in front of the encoder
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_pipeline(source: Iterable[T], work: Callable[[T], U], sink: Callable[[U], None], depth: int = 2
                 ) -> PipelineStats:
    """Iterate ``source`` in a decoder thread, run ``work`` on each item here, hand each result to ``sink`` in an
    encoder thread, in order. Returns when ``sink`` has taken the last result; raises the first failure."""
    stats = PipelineStats()
    stop = threading.Event()
    errors: List[BaseException] = []
    to_work: "queue.Queue" = queue.Queue(max(1, depth))
    to_sink: "queue.Queue" = queue.Queue(max(1, depth))

    def fail(exc: BaseException) -> None:
        errors.append(exc)
        stop.set()

    def put(q: "queue.Queue", item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(q: "queue.Queue"):
        while not stop.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return _END

    def decode() -> None:
        it = iter(source)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    stats.decode_s += time.perf_counter() - t0
                if not put(to_work, item):
                    return
            put(to_work, _END)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            fail(exc)
        finally:
            close = getattr(it, "close", None)  # a generator releases what it holds (an open file) here
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - the first error is the one reported
                    pass

    def encode() -> None:
        try:
            while True:
                item = get(to_sink)
                if item is _END:
                    return
                t0 = time.perf_counter()
                sink(item)
                stats.encode_s += time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            fail(exc)

    threads = [threading.Thread(target=decode, name="lipt-decode", daemon=True),
               threading.Thread(target=encode, name="lipt-encode", daemon=True)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = get(to_work)
            stats.starved_s += time.perf_counter() - t0
            if item is _END:
                break
            t0 = time.perf_counter()
            result = work(item)
            stats.infer_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            if not put(to_sink, result):
                break
            stats.blocked_s += time.perf_counter() - t0
            stats.items += 1
        put(to_sink, _END)
        while threads[1].is_alive():  # joined in steps, so that Ctrl-C still reaches this thread
            threads[1].join(POLL_S)
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt) and not stop.is_set() and put(to_sink, _END):
            # results inference already produced are still written (one image's failure, a full disk in its spill
            # file, must not lose the previous image's finished output); Ctrl-C stops at once
            while threads[1].is_alive() and not stop.is_set():
                threads[1].join(POLL_S)
        errors.insert(0, exc)  # the failure that stopped inference is the one raised
        stop.set()
    finally:
        stop.set()
        for t in threads:
            t.join()
        stats.wall_s = time.perf_counter() - start
    if errors:
        raise errors[0]
    return stats
