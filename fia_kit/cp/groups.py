"""Process groups for the recipes: a real ``torch.distributed`` group, an in-process one, and a bounded launcher.

    results = launch(fn, world_size=2, args=(...,), timeout=60)      # W gloo processes on 127.0.0.1
    results = run_in_process(fn, world_size=2, args=(...,))          # W threads, the same collectives
    group = init_from_env()          # inside a process torchrun (or ``launch``) started: RANK, WORLD_SIZE, MASTER_*

``fn(group, *args)`` runs once per rank and returns a picklable value; both runners return the values in rank
order. ``Group`` holds the collectives the call sites use (vLLM's ``GroupCoordinator.all_gather(t, dim)`` /
``reduce_scatter(t, dim)`` spelling, ``dist.all_to_all_single``) and a ring shift for ring prefill.

* ``TorchGroup`` wraps a torch.distributed process group: gloo on CPU here, HCCL on an Ascend box
  (``init_from_env("hccl")`` after ``import torch_npu``).
* ``InProcessGroup`` runs the ranks as threads of one process that exchange tensors through shared slots. Its
  collectives are exact (each rank gets the same tensors a real group would deliver; sums add in rank order), and it
  leaves out everything a real group adds: no serialisation, no transport or device streams, no overlap of
  communication with compute, no timeouts of the backend (a barrier with ``timeout`` instead), no separate memory
  per rank (ranks share the process's tensors, so a rank that writes into a tensor it sent changes what others see:
  the collectives copy to prevent it), and no failure of one rank's process.
* ``launch`` starts ``world_size`` processes (forked from a fork server, or spawned) with torchrun's environment (``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``), gloo bound to the
  loopback interface, every collective bounded by ``timeout``; it joins with a deadline, kills stragglers and raises
  ``RankError`` naming the rank that failed. ``python -m fia_kit.cp module:function --nproc 2`` runs a
  function the same way, or as one rank when torchrun started it
  (``torchrun --nproc-per-node 2 -m fia_kit.cp module:function``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import pickle
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from ..errors import FIAArgumentError

__all__ = ["Group", "TorchGroup", "InProcessGroup", "RankError", "launch", "run_in_process", "init_from_env",
           "free_port"]

DEFAULT_TIMEOUT = 60.0


class RankError(RuntimeError):
    """A rank raised, timed out or died; the message names the rank and carries its traceback."""


class Group:
    """The collectives the recipes use. ``rank`` and ``world_size`` are this rank's place in the group."""

    rank: int
    world_size: int

    def all_gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along ``dim`` in rank order (vLLM's ``GroupCoordinator``)."""
        raise NotImplementedError

    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor) -> None:
        """``dist.all_to_all_single``: dim 0 of ``input`` in W equal parts, part j to rank j, into ``output``."""
        raise NotImplementedError

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``tensor`` (a new tensor)."""
        raise NotImplementedError

    def reduce_scatter(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The sum over ranks, split along ``dim`` in W equal parts: this rank's part (vLLM's spelling)."""
        raise NotImplementedError

    def ring_shift(self, tensor: torch.Tensor) -> torch.Tensor:
        """Send ``tensor`` to rank + 1 and return what rank - 1 sent (same shape and dtype on every rank)."""
        raise NotImplementedError


def _split_sizes(tensor: torch.Tensor, dim: int, world_size: int) -> int:
    if tensor.shape[dim] % world_size:
        raise FIAArgumentError("tensor", f"dim {dim} must split into {world_size} equal parts", tuple(tensor.shape))
    return tensor.shape[dim] // world_size


class TorchGroup(Group):
    """A ``torch.distributed`` process group (the default one unless ``group`` is given)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def all_gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor) -> None:
        dist.all_to_all_single(output, input, group=self.group)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, group=self.group)
        return out

    def reduce_scatter(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        size = _split_sizes(tensor, dim, self.world_size)
        parts = [p.contiguous() for p in tensor.split(size, dim=dim)]
        out = torch.empty_like(parts[0])
        dist.reduce_scatter(out, parts, group=self.group)
        return out

    def ring_shift(self, tensor: torch.Tensor) -> torch.Tensor:
        received = torch.empty_like(tensor)
        ops = [dist.P2POp(dist.isend, tensor.contiguous(), (self.rank + 1) % self.world_size, group=self.group),
               dist.P2POp(dist.irecv, received, (self.rank - 1) % self.world_size, group=self.group)]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        return received


class _Exchange:
    """The slots and barrier the threads of one ``run_in_process`` share."""

    def __init__(self, world_size: int, timeout: float) -> None:
        self.world_size = world_size
        self.slots: list[Any] = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=timeout)

    def swap(self, rank: int, value: Any) -> list[Any]:
        """Publish ``value`` and return every rank's (after all published; slots reusable once all have read)."""
        self.slots[rank] = value
        self.barrier.wait()
        seen = list(self.slots)
        self.barrier.wait()
        return seen


class InProcessGroup(Group):
    """One rank of ``run_in_process``: a thread; collectives through shared slots (module docstring)."""

    def __init__(self, rank: int, exchange: _Exchange) -> None:
        self.rank = rank
        self.world_size = exchange.world_size
        self._exchange = exchange

    def _everyone(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self._exchange.swap(self.rank, tensor.detach().clone())

    def all_gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return torch.cat(self._everyone(tensor), dim=dim)

    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor) -> None:
        size = _split_sizes(input, 0, self.world_size)
        parts = self._everyone(input)
        output.copy_(torch.cat([p[self.rank * size:(self.rank + 1) * size] for p in parts]))

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = self._everyone(tensor)
        total = parts[0].clone()
        for p in parts[1:]:
            total += p
        return total

    def reduce_scatter(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        size = _split_sizes(tensor, dim, self.world_size)
        return self.all_reduce(tensor).narrow(dim, self.rank * size, size).clone()

    def ring_shift(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._everyone(tensor)[(self.rank - 1) % self.world_size]


def _check_world(world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise FIAArgumentError("world_size", "must be an int >= 1", world_size)


def run_in_process(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (),
                   timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
    """Run ``fn(group, *args)`` on ``world_size`` ranks as threads of this process; the results in rank order.

    Raises:
        the exception of the lowest rank that raised one (a note names the rank), e.g. ``FIAArgumentError``;
        RankError: a collective waited past ``timeout`` (a rank never joined it).
    """
    _check_world(world_size)
    exchange = _Exchange(world_size, timeout)
    results: list[Any] = [None] * world_size
    errors: dict[int, BaseException] = {}
    abandoned: set[int] = set()

    def body(rank: int) -> None:
        try:
            results[rank] = fn(InProcessGroup(rank, exchange), *args)
        except threading.BrokenBarrierError:
            abandoned.add(rank)
        except BaseException as error:  # noqa: BLE001 - raised in the caller's thread, with the rank
            errors[rank] = error
            exchange.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), name=f"fia-kit-rank-{r}", daemon=True)
               for r in range(world_size)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        exchange.barrier.abort()
        raise RankError(f"in-process ranks still running after {timeout} s")
    if errors:
        first = min(errors)
        errors[first].add_note(f"(raised on in-process rank {first} of {world_size})")
        raise errors[first]
    if abandoned:
        raise RankError(f"ranks {sorted(abandoned)} of {world_size}: a collective waited past {timeout} s "
                        "(a rank never joined it)")
    return results


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_from_env(backend: str = "gloo", timeout: float = DEFAULT_TIMEOUT) -> TorchGroup:
    """Join the group torchrun (or ``launch``) described in the environment; gloo stays on the loopback interface.

    Reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (``env://``). Every collective fails after ``timeout`` s.
    """
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise FIAArgumentError("environment", "needs torchrun's variables (start the script with torchrun or "
                               "fia_kit.cp.launch)", missing)
    if backend == "gloo" and os.environ["MASTER_ADDR"] in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout))
    return TorchGroup()


def _rank_main(rank: int, world_size: int, port: int, target: Callable[..., Any], args: Sequence[Any],
               timeout: float, queue: Any) -> None:
    """One spawned rank: torchrun's environment, the group, ``target``; the pickled result (or error) on ``queue``."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    try:
        group = init_from_env("gloo", timeout)
        result = target(group, *args)
        payload = ("ok", pickle.dumps(result))
        dist.barrier()
    except BaseException:  # noqa: BLE001 - sent to the parent, which raises RankError
        payload = ("error", traceback.format_exc())
    queue.put((rank, *payload))
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (),
           timeout: float = DEFAULT_TIMEOUT, start_method: str = "forkserver") -> list[Any]:
    """Run ``fn(group, *args)`` on ``world_size`` gloo processes on 127.0.0.1; the results in rank order.

    ``fn`` and ``args`` must be picklable (``fn`` a module-level function of an importable module). The ranks are
    forked from a fork server that imported torch and the kit once (``start_method="forkserver"``, reused by later
    launches of this process), or started fresh ("spawn": each rank imports torch, seconds per process). The whole
    run, start-up included, is bounded by ``timeout`` seconds; after a failure or the deadline the other ranks are
    terminated, then killed.

    Raises:
        RankError: a rank raised (its traceback), died, or the run passed ``timeout``.
    """
    _check_world(world_size)
    import multiprocessing

    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        module = getattr(fn, "__module__", None)
        context.set_forkserver_preload(["fia_kit.cp.scenarios"] + ([module] if module and module != "__main__"
                                                                    else []))
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=_rank_main, args=(r, world_size, port, fn, tuple(args), timeout, queue),
                                 name=f"fia-kit-rank-{r}", daemon=True) for r in range(world_size)]
    for p in processes:
        p.start()
    deadline = time.monotonic() + timeout
    outcome: dict[int, tuple[str, Any]] = {}
    finished = False
    try:
        while len(outcome) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RankError(f"ranks {sorted(set(range(world_size)) - set(outcome))} did not finish within "
                                f"{timeout} s")
            try:
                rank, status, payload = queue.get(timeout=min(left, 0.5))
            except Exception:  # queue.Empty: check for a rank that died without reporting
                dead = [r for r, p in enumerate(processes) if r not in outcome and p.exitcode not in (None, 0)]
                if dead:
                    raise RankError(f"rank {dead[0]} died (exit code {processes[dead[0]].exitcode})") from None
                continue
            outcome[rank] = (status, payload)
            if status == "error":
                raise RankError(f"rank {rank} of {world_size} failed:\n{payload}")
        finished = True
    finally:
        for p in processes:  # after success the ranks are tearing down their group; else stop them now
            p.join(max(0.1, min(5.0, deadline - time.monotonic())) if finished else 0.1)
        for p in processes:
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
        queue.close()
    return [pickle.loads(outcome[r][1]) for r in range(world_size)]


def _resolve(name: str) -> Callable[..., Any]:
    module, _, attribute = name.partition(":")
    if not attribute:
        raise FIAArgumentError("function", "must be module:function", name)
    return getattr(importlib.import_module(module), attribute)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fia_kit.cp module:function [--nproc N] [--timeout S]``; under torchrun, one rank."""
    parser = argparse.ArgumentParser(prog="python -m fia_kit.cp", description=main.__doc__)
    parser.add_argument("function", help="module:function taking (group) and returning a printable value")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--backend", default="gloo", help="under torchrun: gloo, or hccl on an Ascend box")
    options = parser.parse_args(argv)
    fn = _resolve(options.function)
    if "RANK" in os.environ:  # torchrun started this process: be one rank
        print(f"rank {os.environ['RANK']}: {fn(init_from_env(options.backend, options.timeout))}")
        dist.destroy_process_group()
        return 0
    for rank, result in enumerate(launch(fn, options.nproc, timeout=options.timeout)):
        print(f"rank {rank}: {result}")
    return 0
