"""Lengths of unions of time intervals: one character's overlapping appearances count once."""
from __future__ import annotations


def union_length(intervals) -> float:
    """Total length covered by ``(start, end)`` intervals (seconds or frames), overlaps counted once."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total
