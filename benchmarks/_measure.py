"""Measuring one process from inside: forward peak memory (resident set on CPU, the allocator's peak on CUDA)
and CPU time of the whole machine, for the benchmark workers."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import threading
from pathlib import Path

import torch

MB = 2**20


class PeakRSS:
    """Peak resident memory during the block, minus the RSS right before it (after gc + malloc_trim).
    The larger of a sampler thread reading /proc/self/statm every ~1 ms and the kernel's exact high-water
    mark (VmHWM, reset through /proc/self/clear_refs where that is allowed)."""

    def __init__(self):
        self.fd, self.page = os.open("/proc/self/statm", os.O_RDONLY), os.sysconf("SC_PAGE_SIZE")
        try:
            self.trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            self.trim = lambda _: None

    def rss(self) -> int:
        return int(os.pread(self.fd, 200, 0).split()[1]) * self.page

    def __enter__(self):
        gc.collect()
        self.trim(0)
        self.base = self.peak = self.rss()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.hwm = True
        except OSError:
            self.hwm = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        if self.hwm:
            kb = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
            self.peak = max(self.peak, kb * 1024)
        self.delta = self.peak - self.base
        os.close(self.fd)


class CudaPeak:
    """torch.cuda.max_memory_allocated during the block (peak, weights included) and its increase."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()
        self.delta = self.peak - self.base


def cpu_jiffies() -> tuple[int, int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat and this process' own (utime + stime)."""
    v = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(v) - v[3] - v[4], sum(v), int(own[11]) + int(own[12])
