"""Reading a merge's inputs ahead of it: map them in (from disk when cold) in the order the merge consumes them,
up to READ_AHEAD bytes beyond the tensor being written (merge.pages). The thread starts before torch is imported,
so a cold disk is busy from the first second, and a warm merge finds its pages mapped.
"""

import os
import threading

from merge import pages
from merge.plan import MergePlan


# Input bytes mapped in beyond the tensor being written: enough to keep a disk busy through torch's import,
# little enough that the pages are still cached when the merge gets there.
def _read_ahead_bytes() -> int:
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), where read-ahead is off anyway
        return 1 << 30
    return min(4 << 30, max(256 << 20, ram // 8))


READ_AHEAD = _read_ahead_bytes()


def read_ahead(plan: MergePlan, position: list[int], stop: threading.Event) -> None:
    """Run on a thread until ``stop``; ``position[0]`` is the index of the entry being written. Contiguous
    ranges are joined, so that few calls cover a lot while torch's import holds the GIL."""
    if not pages.available():
        return
    ranges = [[r for src in plan.sources_of(e) for r in src.byte_ranges(e.name)] for e in plan.entries]
    upto = [0]
    for rs in ranges:
        upto.append(upto[-1] + sum(end - start for _, start, end in rs))
    held = pages.Addresses()  # each mapping's address, held until every call has returned
    pending: dict[int, list[int]] = {}  # mapping's address -> [start, end] not yet populated

    def flush() -> bool:
        ok = all(pages.populate(base, start, end) for base, (start, end) in pending.items())
        pending.clear()
        return ok

    try:
        for i, rs in enumerate(ranges):
            while not stop.is_set() and upto[i] - upto[position[0]] > READ_AHEAD:
                if not flush():
                    return  # the kernel refuses (a filesystem without it): the merge faults pages in itself
                stop.wait(0.005)
            if stop.is_set():
                return
            for mapping, start, end in rs:
                base = held.of(mapping)
                run = pending.get(base)
                if run and run[1] == start and end - run[0] <= pages.STEP:
                    run[1] = end
                    continue
                if run and not pages.populate(base, *run):
                    return
                pending[base] = [start, end]
        flush()
    finally:
        held.close()
