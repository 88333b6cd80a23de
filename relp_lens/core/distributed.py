"""Data parallel runs with ``torch.distributed``: every rank takes a share of the prompts, partial sums are
combined with ``all_reduce``, and the result equals a single-process run up to float summation order.

Run a script (or the CLI) under ``torchrun``::

    torchrun --nproc_per_node=2 -m relp_lens.cli trace --task nounpp --k 100 --out circuit.json
    torchrun --nproc_per_node=4 my_script.py      # my_script: with relp_lens.data_parallel(): ...

1. :func:`data_parallel` (a context manager) joins the process group ``torchrun`` describes (``RANK``,
   ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment): Gloo on CPUs, NCCL when the model is
   on CUDA (each rank on ``cuda:LOCAL_RANK``). Outside ``torchrun`` (no ``WORLD_SIZE`` or 1) it does nothing
   and everything runs in one process as usual.
2. Inside it, the library's batch loops shard their batches (:func:`shard`: batch ``j`` goes to rank
   ``j mod world``; batches are built identically on every rank from all prompts, so positions, alignment
   and batch contents are those of a single-process run). Every running sum — attribution's float64
   ``score_sum`` and counts, per-example metrics, mean activations for the ``mean`` baseline and for mean
   ablation, the metric sums behind F(·) in faithfulness, edge weights — is combined with
   :func:`all_reduce` (float64 sums on the CPU for Gloo; on the device for NCCL).
3. Failure: before every combination, :func:`agree` gathers each rank's state; if any rank raised, every
   rank raises a :class:`~relp_lens.core.errors.RelPLensError` naming the failing rank and its error, so no rank
   waits forever in a collective and no output is written.
4. Output: :func:`is_writer` is true on rank 0 only; the CLI writes files (atomically) and prints there.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch

from relp_lens.core import validate
from relp_lens.core.errors import RelPLensError

T = TypeVar("T")
_state: dict[str, Any] = {"active": False, "rank": 0, "world": 1, "owned": False}


def launched() -> bool:
    """True when this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return _state["active"]


def rank() -> int:
    return _state["rank"]


def current_backend() -> str | None:
    """``"gloo"`` or ``"nccl"`` inside a run, else None."""
    return _state.get("backend") if _state["active"] else None


def current_device() -> str:
    """The device this rank was given (``data_parallel``'s ``device``; by default ``cuda:LOCAL_RANK`` under NCCL
    and ``cpu`` under Gloo); ``cpu`` outside a run."""
    return str(_state.get("device", "cpu")) if _state["active"] else "cpu"


def is_writer() -> bool:
    """True where outputs are written: rank 0 (or the only process)."""
    return _state["rank"] == 0


@contextlib.contextmanager
def data_parallel(backend: str | None = None, device: str | None = None) -> Iterator[dict]:
    """Shard the library's batch loops over the ``torchrun`` processes inside the block (see the module
    docstring). Yields ``{"rank", "world", "device"}``; ``device`` is the one this rank should put its model
    on (``cuda:LOCAL_RANK`` under NCCL, else ``cpu``)."""
    import torch.distributed as dist

    if _state["active"]:
        raise RelPLensError("data_parallel() blocks do not nest")
    if device is not None:
        device = str(validate.device(device))
    if not launched():
        yield {"rank": 0, "world": 1, "device": device or "cpu"}
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")) else "gloo"
    if backend not in ("gloo", "nccl"):
        raise RelPLensError(f"unknown torch.distributed backend {backend!r}; use 'gloo' (CPU) or 'nccl' (GPUs)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        device = device or f"cuda:{local}"
        torch.cuda.set_device(torch.device(device))
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend=backend)
    _state.update(active=True, rank=dist.get_rank(), world=dist.get_world_size(), owned=owned, backend=backend,
                  device=device or "cpu")
    try:
        yield {"rank": _state["rank"], "world": _state["world"], "device": _state["device"]}
    finally:
        _state.update(active=False, rank=0, world=1)
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def shard(items: Sequence[T], what: str = "batches", *, allow_empty: bool = False) -> list[T]:
    """This rank's share of ``items`` (item ``j`` to rank ``j mod world``); all of them outside a run.

    Every rank gets at least one item: fewer items than processes is an error (on every rank alike, since
    every rank sees the same items), unless ``allow_empty`` (for sums whose empty share is harmless)."""
    if not _state["active"]:
        return list(items)
    if len(items) < _state["world"] and not allow_empty:
        raise RelPLensError(f"{len(items)} {what} for {_state['world']} processes: every process needs at least one "
                            f"(use fewer processes, more prompts or a smaller batch_size)")
    return [x for j, x in enumerate(items) if j % _state["world"] == _state["rank"]]


def agree(error: BaseException | None, what: str) -> None:
    """Collective check (every rank must call it): if any rank hit an error, raise on every rank."""
    if not _state["active"]:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    mine = None if error is None else f"{type(error).__name__}: {error}"
    got: list[Any] = [None] * _state["world"]
    dist.all_gather_object(got, mine)
    failed = [(r, m) for r, m in enumerate(got) if m is not None]
    if failed:
        r, m = failed[0]
        if error is not None and r == _state["rank"] and isinstance(error, RelPLensError):
            raise error
        raise RelPLensError(f"rank {r} of {_state['world']} failed during {what}: {m}") from error


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Run this rank's local work; then every rank checks with :func:`agree` (so all fail together)."""
    if not _state["active"]:
        yield
        return
    error = None
    try:
        yield
    except BaseException as e:  # noqa: BLE001 — re-raised on every rank by agree()
        error = e
        if not isinstance(e, RelPLensError):
            traceback.print_exc()
    agree(error, what)


def _comm_device() -> str:
    """Where collectives run: NCCL needs CUDA tensors, Gloo CPU ones."""
    return _state["device"] if _state.get("backend") == "nccl" else "cpu"


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks (a new tensor, same dtype and device as ``x``); ``x`` outside a run."""
    if not _state["active"]:
        return x
    import torch.distributed as dist

    y = x.detach().to(_comm_device(), torch.float64 if x.is_floating_point() else torch.int64).clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device, x.dtype)


def all_reduce_float(x: float) -> float:
    return float(all_reduce(torch.tensor([x], dtype=torch.float64))[0])


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` stacked in rank order: ``[world, *x.shape]`` (same dtype and device as ``x``);
    ``x[None]`` outside a run. Every rank must pass the same shape and dtype."""
    if not _state["active"]:
        return x[None]
    import torch.distributed as dist

    y = x.detach().to(_comm_device()).contiguous()
    out = [torch.empty_like(y) for _ in range(_state["world"])]
    dist.all_gather(out, y)
    return torch.stack(out).to(x.device)


def everywhere(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (``flag`` outside a run): for a choice every rank must make alike,
    such as reusing a cache one node may lack."""
    return bool(all_reduce(torch.tensor([0 if flag else 1]))[0] == 0)
