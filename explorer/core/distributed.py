"""Data-parallel runs on torch.distributed: which process am I, which items are mine, and the few collectives that
make N processes compute what one process computes.

Why this shape: `torchrun --nproc-per-node N -m explorer eval …` starts N copies of the CLI with RANK, WORLD_SIZE
and LOCAL_RANK set. Each copy loads the model on its own GPU (cuda:LOCAL_RANK) or CPU, takes every N-th item
(`Ranks.shard`), and meets the others only where the result depends on all items: the calibration states
(`gather_rows`, so every rank builds the same profile), the refusal counts of `--strength auto` (`sum_counts`),
and the end of the evaluation (`barrier`, then rank 0 merges the per-rank shards). Without torchrun nothing here
starts a process group and `SINGLE` makes every call a no-op, so there is one code path for 1 or N processes.

>>> Ranks(rank=1, world_size=3).shard(list("abcdefg"))
['b', 'e']
>>> SINGLE.shard([1, 2, 3])
[1, 2, 3]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["COLLECTIVE_TIMEOUT", "Ranks", "SINGLE", "barrier", "broadcast_object", "gather_rows", "ranks_from_env",
           "start", "stop", "sum_counts"]

T = TypeVar("T")

#: How long a rank waits for the others at a collective. Ranks reach the end of an evaluation at different times
#: (their items differ in length), so the wait is generous; a rank that *fails* does not leave the others waiting:
#: torchrun stops every worker when one exits with an error.
COLLECTIVE_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run: `rank` of `world_size`, `local_rank` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"bad process ranks: rank {self.rank} of {self.world_size} (local {self.local_rank})")

    @property
    def active(self) -> bool:
        """True when several processes share the work (a process group is or must be started)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes what is written once: the merged generations, metrics, report and profile."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every `world_size`-th from `rank` (balanced to within one item; stable order)."""
        return list(items[self.rank :: self.world_size])


SINGLE = Ranks()


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The ranks torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK); `SINGLE` when they are absent."""
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from err
    return Ranks(rank=rank, world_size=world, local_rank=local) if world > 1 else SINGLE


def start(ranks: Ranks, device: str) -> str:
    """Join the process group (NCCL when this rank runs on CUDA, else gloo) and return the device for this rank.

    `device` is the user's `--device`: "auto" or "cuda" become this rank's own GPU, cuda:LOCAL_RANK; "cpu" stays.
    A no-op for a single process (the device is returned unchanged).
    """
    if not ranks.active:
        return device
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        if device not in ("auto", "cuda"):
            raise ValueError(f"with several processes each rank takes its own GPU (cuda:LOCAL_RANK); "
                             f"--device {device} would put them all on one: use --device cuda or auto")
        if torch.cuda.device_count() <= ranks.local_rank:
            raise ValueError(f"rank {ranks.rank} needs GPU {ranks.local_rank} but this node has "
                             f"{torch.cuda.device_count()}: start at most that many processes per node")
        torch.cuda.set_device(ranks.local_rank)
        device = f"cuda:{ranks.local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_cuda else "gloo", rank=ranks.rank,
                                world_size=ranks.world_size, timeout=COLLECTIVE_TIMEOUT)
    return device


def stop() -> None:
    """Leave the process group (when one was started)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(ranks: Ranks, local: torch.Tensor, total: int) -> torch.Tensor:
    """All `total` rows in item order, on every rank, from each rank's `shard` of them (`local`, rows first).

    Rows are padded to the largest shard for the all-gather, then interleaved back: row i came from rank
    i % world_size, where it was row i // world_size. The values are the ranks' own, bit for bit.
    """
    if not ranks.active:
        return local
    sizes = [len(range(r, total, ranks.world_size)) for r in range(ranks.world_size)]
    if local.shape[0] != sizes[ranks.rank]:
        raise ValueError(f"rank {ranks.rank} holds {local.shape[0]} rows, its shard of {total} has {sizes[ranks.rank]}")
    device = _comm_device()
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(ranks.world_size)]
    dist.all_gather(parts, padded.contiguous())
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r :: ranks.world_size] = part[: sizes[r]].cpu()
    return out


def sum_counts(ranks: Ranks, counts: Sequence[int]) -> list[int]:
    """Element-wise sum of integer counts over all ranks (exact: int64)."""
    if not ranks.active:
        return list(counts)
    tensor = torch.tensor(list(counts), dtype=torch.int64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [int(v) for v in tensor.cpu()]


def barrier(ranks: Ranks) -> None:
    """Wait until every rank arrives here."""
    if ranks.active:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(ranks: Ranks, value: Any) -> Any:
    """Rank 0's `value` on every rank (a small picklable object: metrics, a choice)."""
    if not ranks.active:
        return value
    box = [value if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]
