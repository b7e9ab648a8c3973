"""Tests of `mog_flows.study_runner.run_many`: order, pooling, caching and resuming with any run function."""

from __future__ import annotations

import math

import pytest
import torch

from mog_flows.studies.runner import run_many


def square(spec: int) -> dict:
    """A run: its row records the spec and torch's thread count inside the run."""
    return {"spec": spec, "square": torch.tensor(float(spec * spec)), "threads": torch.get_num_threads()}


def key(spec: int) -> str:
    return f"spec-{spec}"


def failing(spec: int) -> dict:
    if spec == 2:
        raise RuntimeError("run 2 failed")
    return square(spec)


@pytest.mark.parametrize("workers", [1, 2])
def test_rows_come_back_in_spec_order_with_one_thread_per_run(workers):
    threads = torch.get_num_threads()
    rows = run_many([3, 1, 2], square, key=key, workers=workers, cost=lambda spec: spec)
    assert [row["spec"] for row in rows] == [3, 1, 2]
    assert [row["square"].item() for row in rows] == [9.0, 1.0, 4.0]
    assert all(row["threads"] == 1 for row in rows)
    assert torch.get_num_threads() == threads


def test_cached_rows_are_not_run_again_and_a_failed_study_resumes(tmp_path):
    with pytest.raises(RuntimeError, match="run 2 failed"):
        run_many([1, 2, 3], failing, key=key, cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["spec-1.pt"]  # finished before the failure
    (tmp_path / "spec-9.pt").write_bytes(b"cut short")  # a file a kill left half-written is run again
    done = []
    rows = run_many([1, 2, 3, 9], square, key=key, cache_dir=tmp_path, on_result=lambda *a: done.append(a[:2]))
    assert [row["spec"] for row in rows] == [1, 2, 3, 9]
    assert done == [(2, 4), (3, 4), (4, 4)]  # run 1 came from the cache
    assert "spec_key" not in rows[0]


def test_a_row_cached_under_another_key_is_not_reused(tmp_path):
    run_many([1], square, key=key, cache_dir=tmp_path)
    (tmp_path / "spec-1.pt").rename(tmp_path / "spec-5.pt")
    rows = run_many([5], square, key=key, cache_dir=tmp_path)
    assert rows[0]["spec"] == 5


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        run_many([1], square, key=key, workers=0)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_any_executor_runs_the_specs_with_the_cache_as_the_source_of_truth(tmp_path, kind):
    import concurrent.futures
    import multiprocessing

    threads = torch.get_num_threads()  # threads restore torch's global thread count in any order: put it back
    if kind == "thread":
        executor = concurrent.futures.ThreadPoolExecutor(2)
    else:
        executor = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    with executor:
        with pytest.raises(RuntimeError, match="run 2 failed"):
            run_many([1, 2, 3], failing, key=key, cache_dir=tmp_path, executor=executor)
        assert "spec-2.pt" not in {p.name for p in tmp_path.glob("*.pt")}
        done = []
        rows = run_many(
            [1, 2, 3],
            square,
            key=key,
            cache_dir=tmp_path,
            executor=executor,
            on_result=lambda d, n, row: done.append((d, n)),
            cost=lambda spec: spec,
        )
    assert [row["square"].item() for row in rows] == [1.0, 4.0, 9.0]
    assert all(n == 3 for _, n in done) and max(d for d, _ in done) == 3
    torch.set_num_threads(threads)
    assert all(row["threads"] == 1 for row in rows if "threads" in row)


def test_an_executor_and_workers_are_not_both_taken():
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        with pytest.raises(ValueError, match="workers \\(a local pool\\) or an executor, not both"):
            run_many([1], square, key=key, workers=2, executor=executor)
    with pytest.raises(TypeError, match="concurrent.futures.Executor; got int"):
        run_many([1], square, key=key, executor=3)


TIMING = ("train_seconds", "seconds_per_step")  # the only columns that differ between two runs of a spec


def quick_comparison_specs() -> list:
    """The specs of `compare_bases --quick` (its targets, transforms and models), at tiny sizes and steps."""
    from mog_flows.studies import comparison

    tiny = dict(steps=4, batch_size=32, hidden_features=8, num_layers=2, num_train=200, num_val=50, num_test=100)
    transforms = comparison.QUICK["transforms"]
    return [
        comparison.RunSpec(dataset, base, transform, seed=seed, checkpoint_every=2, **tiny)
        for dataset in comparison.QUICK["datasets"]
        for transform in transforms
        for seed in comparison.QUICK["seeds"]
        for base in (*comparison.BASES, "mixture")
        if base != "mixture" or transform == transforms[0]
    ]


def without_timing(rows: list[dict]) -> list[dict]:
    """The rows without their timing columns, NaN written "nan" (so that equal rows compare equal)."""

    def plain(value):
        return "nan" if isinstance(value, float) and math.isnan(value) else value

    timing = lambda key: key in TIMING or key.startswith("seconds_per_step")  # noqa: E731 - summaries too
    return [{k: plain(v) for k, v in row.items() if not timing(k)} for row in rows]


def test_a_dask_local_cluster_runs_the_quick_comparison_as_the_process_pool_does_and_resumes(tmp_path):
    """The quick comparison through `client.get_executor()` of a real dask LocalCluster (two worker processes of
    one thread on loopback): the same rows and table as the default process pool, a row cache filled as runs end,
    and a study stopped after its first row that resumes from that cache."""
    distributed = pytest.importorskip("dask.distributed")
    from mog_flows.studies import comparison

    specs = quick_comparison_specs()
    assert len(specs) == 15 and {s.dataset for s in specs} == {"eight_gaussians", "grid", "rings"}
    pooled = comparison.run_comparison(specs, workers=2)

    class Stop(Exception):
        pass

    def stop_after_the_first(done, total, row):
        raise Stop

    cache = tmp_path / "cache"
    done = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1") as cluster:
        with distributed.Client(cluster) as client:
            with pytest.raises(Stop):  # an interrupted study: the other runs are cancelled
                comparison.run_comparison(
                    specs, cache_dir=cache, executor=client.get_executor(), on_result=stop_after_the_first
                )
            cached = len(list(cache.glob("*.pt")))
            assert cached == 1
            rows = comparison.run_comparison(
                specs, cache_dir=cache, executor=client.get_executor(), on_result=lambda d, n, row: done.append(d)
            )
    assert sorted(done) == list(range(cached + 1, len(specs) + 1))  # only the runs missing from the cache ran
    assert len(list(cache.glob("*.pt"))) == len(specs)
    assert without_timing(rows) == without_timing(pooled)  # the same numbers, row for row, in the order of specs
    assert without_timing(comparison.summarize(rows)) == without_timing(comparison.summarize(pooled))
    assert all(row["error"] == "" for row in rows)
