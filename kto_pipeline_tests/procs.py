"""Process and port helpers shared by the tests and the benchmarks that start servers and clusters (Linux /proc)."""

from __future__ import annotations

import socket
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """n distinct localhost ports that were free a moment ago (all bound at once, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def parents() -> dict[int, int]:
    """pid -> parent pid of every process now (from /proc/<pid>/stat; processes that vanish meanwhile are left out)."""
    out: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def descendants(pids: set[int]) -> set[int]:
    """pids and every process below them (from /proc: ppid links), those still running."""
    links = parents()
    found, frontier = set(pids), set(pids)
    while frontier:
        frontier = {p for p, pp in links.items() if pp in frontier} - found
        found |= frontier
    return {p for p in found if p in links}
