"""The energy column of a benchmark record: joules read around each timed generation."""

from __future__ import annotations

import glob
import os
import re
import time


class EnergyMeter:
    """Cumulative joules: Intel RAPL package counters when readable, else a labelled estimate."""

    WATTS_PER_CORE = 10.0
    ROOT = "/sys/class/powercap"

    def __init__(self) -> None:
        # Sub-zones (intel-rapl:0:0, ...) are parts of their package, so only packages are summed.
        packages = [z for z in sorted(glob.glob(f"{self.ROOT}/intel-rapl:*"))
                    if re.fullmatch(r"intel-rapl:\d+", os.path.basename(z))]
        self.zones = [z for z in packages if _read_int(z + "/energy_uj") is not None]  # often root-only
        self.source = "rapl" if self.zones else f"estimate: process CPU time x {self.WATTS_PER_CORE:g} W per core"
        self._last = {z: _read_int(z + "/energy_uj") for z in self.zones}
        self._total_uj = 0

    def read(self) -> float:
        if not self.zones:
            # process_time sums CPU seconds over all threads, i.e. core-seconds.
            return time.process_time() * self.WATTS_PER_CORE
        for zone in self.zones:
            now = _read_int(zone + "/energy_uj") or 0
            delta = now - self._last[zone]
            if delta < 0:  # the counter wrapped around
                delta += _read_int(zone + "/max_energy_range_uj") or 0
            self._total_uj += delta
            self._last[zone] = now
        return self._total_uj / 1e6


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
