"""Run many independent experiment specs: one torch thread per run, an optional process pool, and a cache of
finished rows so that a killed study resumes where it stopped.

Runs go to a local process pool (`workers`) or to any `concurrent.futures.Executor` (`executor`): a
`dask.distributed` client's `client.get_executor()`, a Slurm executor (`submitit.AutoExecutor`), a Ray pool, a
`ProcessPoolExecutor`. The row cache stays the source of truth, so a study interrupted on a cluster resumes from the
rows that reached it.

A study supplies `run(spec) -> row` (a dict of plain values and tensors), `key(spec) -> str` (a file-name-safe
digest of everything that defines the run, and of the format of its rows) and optionally `cost(spec)` (a rough
relative cost: with a pool the longest runs start first). `run` and the specs must pickle when `workers > 1`
(module-level functions, dataclasses), since the pool spawns fresh processes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..checks import check_positive_int

__all__ = ["run_many"]

Row = dict[str, Any]


def _init_worker() -> None:
    torch.set_num_threads(1)


def _run_indexed(item: tuple[int, Any, Callable[[Any], Row]]) -> tuple[int, Row]:
    index, spec, run = item
    return index, run(spec)


def _run_on_one_thread(item: tuple[int, Any, Callable[[Any], Row]], submission: str = "") -> tuple[int, Row]:
    """`_run_indexed` with one torch thread, restored afterwards (an executor's worker may run other work).
    `submission` is unused: it tells the calls of one `run_many` from another's (see `_run_on_executor`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_indexed(item)
    finally:
        torch.set_num_threads(threads)


def _load_cached(cache_dir: Path | None, key: str) -> Row | None:
    path = None if cache_dir is None else cache_dir / f"{key}.pt"
    if path is None or not path.exists():
        return None
    try:
        row = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a file cut short by a kill: run the spec again
        return None
    if not (isinstance(row, dict) and row.get("spec_key") == key):
        return None
    row.pop("spec_key")
    return row


def _save_cached(cache_dir: Path, key: str, row: Row) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.pt"
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({**row, "spec_key": key}, temporary)
    os.replace(temporary, path)  # atomic: a kill leaves the old file or none, never half of one


def run_many(
    specs: Sequence[Any],
    run: Callable[[Any], Row],
    *,
    key: Callable[[Any], str],
    workers: int = 1,
    on_result: Callable[[int, int, Row], None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    cost: Callable[[Any], float] | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> list[Row]:
    """`run(spec)` for every spec; rows come back in the order of `specs`.

    Every run uses one torch thread (small networks only lose time to intra-op threads); with `workers > 1` the
    runs go to a pool of `workers` spawned processes, the costliest first (with one worker they run in the order
    of `specs`, so that an interrupted study has finished whole leading groups). `on_result(done, total, row)` is
    called as each run finishes.

    With `cache_dir`, each finished row is saved there at once (`<key(spec)>.pt`), and specs whose row is already
    there are not run again.

    `executor`: run the specs there instead (costliest first; `workers` must then be 1): each run gets one torch
    thread, rows are cached as they complete, and on an error or Ctrl-C the runs not yet started are cancelled."""
    check_positive_int("workers", workers)
    if executor is not None and not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor; got {type(executor).__name__}")
    if executor is not None and workers != 1:
        raise ValueError(f"pass workers (a local pool) or an executor, not both; got workers={workers}")
    specs = list(specs)
    cache = None if cache_dir is None else Path(cache_dir)
    keys = [key(spec) for spec in specs]
    rows: list[Row | None] = [_load_cached(cache, k) for k in keys]
    pending = [i for i, row in enumerate(rows) if row is None]
    if (workers > 1 or executor is not None) and cost is not None:
        pending.sort(key=lambda i: -cost(specs[i]))
    items = [(i, specs[i], run) for i in pending]
    already = len(specs) - len(items)
    if executor is not None:
        return _run_on_executor(executor, items, rows, keys, cache, on_result, already)
    threads = torch.get_num_threads()
    if workers == 1 or len(items) <= 1:
        torch.set_num_threads(1)
        results: Iterable[tuple[int, Row]] = map(_run_indexed, items)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(items)), initializer=_init_worker)
        results = pool.imap_unordered(_run_indexed, items)
    finished = False
    try:
        for done, (index, row) in enumerate(results, start=already + 1):
            rows[index] = row
            if cache is not None:
                _save_cached(cache, keys[index], row)
            if on_result is not None:
                on_result(done, len(specs), row)
        finished = True
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            if finished:
                pool.close()
            else:  # an error or Ctrl-C: stop the remaining runs
                pool.terminate()
            pool.join()
    return rows  # type: ignore[return-value]


def _run_on_executor(executor, items, rows, keys, cache, on_result, already) -> list[Row]:
    # dask names a task by its function and arguments (`pure=True`, the default of `client.get_executor()`): without
    # a token per call, a study resumed on the same client after an interruption would submit the tasks the
    # interrupted call cancelled under their old names, and dask answers those with CancelledError
    submission = uuid.uuid4().hex
    futures = [executor.submit(_run_on_one_thread, item, submission) for item in items]
    try:
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=already + 1):
            index, row = future.result()
            rows[index] = row
            if cache is not None:
                _save_cached(cache, keys[index], row)
            if on_result is not None:
                on_result(done, len(rows), row)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return rows  # type: ignore[return-value]
