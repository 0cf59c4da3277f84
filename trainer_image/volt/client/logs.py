"""Which pod holds a rank, and which of its log lines are that rank's: pure functions.

Pod ``<job>-node-<i>`` runs global ranks ``i*P .. i*P+P-1`` (P processes per
node). Its log interleaves them; ``volt-run`` marks each worker's line with the
worker's global rank, as ``[rank N]`` (torch's elastic launcher's own form,
``[<role>N]:``, is understood too). Lines without a mark are the node's own
(the launcher's) and are kept for every rank of the node.
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator, Optional

# "[rank 3] ...", "[rank3]: ...", "[trainer3]:..." (torch's "[<role><global rank>]:").
_RANK_MARK = re.compile(r"^\[(?:rank ?|trainer|default)(\d+)\]:?")


def pod_name(job: str, node_rank: int) -> str:
    return f"{job}-node-{node_rank}"


def node_of_rank(rank: int, processes_per_node: int, nodes: int) -> int:
    """The node rank that runs global ``rank``; ValueError names --rank when out of range."""
    world = processes_per_node * nodes
    if not 0 <= rank < world:
        raise ValueError(f"--rank {rank}: the job has ranks 0..{world - 1} "
                         f"({nodes} nodes x {processes_per_node} processes)")
    return rank // processes_per_node


def rank_of_line(line: str) -> Optional[int]:
    """The global rank a log line is marked with, or None for a node's own line."""
    match = _RANK_MARK.match(line)
    return int(match.group(1)) if match else None


def lines_of_rank(lines: Iterable[str], rank: int) -> Iterator[str]:
    """The lines of ``rank`` and the node's unmarked lines, in order."""
    for line in lines:
        marked = rank_of_line(line)
        if marked is None or marked == rank:
            yield line
