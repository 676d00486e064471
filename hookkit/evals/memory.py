"""Peak memory of an evaluation: process RSS sampled during a call (CPU) and CUDA peak allocation."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import torch

logger = logging.getLogger(__name__)



def peak_memory_stats() -> dict[str, Any]:
    """Peak memory of this process in bytes.

    ``cpu_max_rss_bytes`` comes from ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on
    macOS; None where ``resource`` is missing).  ``cuda_max_allocated_bytes`` sums
    ``torch.cuda.max_memory_allocated`` over visible devices (None without CUDA); ``cuda_per_device`` lists them.
    """
    stats: dict[str, Any] = {"cpu_max_rss_bytes": None, "cuda_max_allocated_bytes": None, "cuda_per_device": []}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stats["cpu_max_rss_bytes"] = int(rss if sys.platform == "darwin" else rss * 1024)
    except (ImportError, OSError):
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                per_device = [int(torch.cuda.max_memory_allocated(i)) for i in range(torch.cuda.device_count())]
                stats["cuda_per_device"] = per_device
                stats["cuda_max_allocated_bytes"] = sum(per_device)
        except Exception:  # noqa: BLE001 - memory probing must never fail a run
            logger.debug("could not query CUDA memory", exc_info=True)
    return stats


# ---------------------------------------------------------------------------------------------- measurement
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


try:
    import os as _os

    _PAGE = _os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    _PAGE = 4096


class PeakMemory:
    """Peak memory of one measured region: resident set size sampled every ``interval`` seconds by a thread,
    and ``torch.cuda.max_memory_allocated`` (reset on entry) on GPU.

    The process-wide high-water mark (``ru_maxrss``) cannot be reset without also resetting what the runner
    reports for the whole run, so per-sample peaks are sampled; allocations shorter than the interval can be
    missed (torch's attention buffers live for milliseconds or more at these lengths).
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_rss: int | None = None
        self.cuda_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and (self.peak_rss is None or rss > self.peak_rss):
                self.peak_rss = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss = _rss_bytes()
        self._thread = threading.Thread(target=self._poll, name="hookkit-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        rss = _rss_bytes()
        if rss is not None and (self.peak_rss is None or rss > self.peak_rss):
            self.peak_rss = rss
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda_peak = int(sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())))
