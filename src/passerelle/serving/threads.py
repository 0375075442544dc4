"""Native thread pools (OpenMP, BLAS) of a serving worker process.

NumPy's BLAS, scikit-learn's OpenMP loops, LightGBM and XGBoost each start one thread per
core by default. With several worker processes on one machine, every worker then runs
cores x workers threads that fight for the same cores: throughput drops and tail latency
jumps because threads get descheduled in the middle of a batch. Micro-batching already
keeps each core busy through the workers, so each worker should use only its share.
"""

from __future__ import annotations

import os
from collections.abc import Callable

# Libraries read these when they start their pool; threadpoolctl only reaches pools that
# are already loaded, so both are needed for a model whose library is imported later.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores, at least one thread."""
    return max(1, available_cores() // max(1, workers))


def limit_native_threads(n: int = 1) -> Callable[[], None]:
    """Cap the OpenMP and BLAS pools of this process at ``n`` threads.

    Call it in each worker process before loading models. Returns a function that puts the
    previous limits and environment back (tests, or a worker that serves alone again).
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    from threadpoolctl import threadpool_limits

    previous = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(n)
    limits = threadpool_limits(limits=n)

    def restore() -> None:
        limits.restore_original_limits()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore


def one_openmp_thread() -> None:
    """Run the calling thread's OpenMP regions on one thread; the initializer of model-calling threads.

    OpenMP's thread count is a setting of each calling thread, and a thread started after the
    process capped its pools still gets the library's default, one per core. Every thread that
    runs parallel regions keeps its own team: a batcher per served version plus the shadow
    thread soon hold more OpenMP threads than there are cores, and libgomp then puts its
    threads to sleep between regions instead of spinning. A tree ensemble opens a region per
    tree, so one 1-row call measured 6-8 ms instead of 0.7 ms on a 2-core machine. One
    thread per call loses little (a 256-row batch: 1.80 ms against 1.72 ms with two) because
    the worker processes and the batches already keep the cores busy.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")
