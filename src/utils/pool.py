"""Worker processes for cohort generation and preprocessing."""
from __future__ import annotations


def process_pool(n: int):
    """An executor of ``n`` fresh interpreter processes (no forked OpenMP, CUDA or Lightning state).

    Normally a ``spawn`` ``ProcessPoolExecutor``. Inside a job run by ``hydra/launcher=joblib`` (a loky
    worker) the spawn pool cannot start: its children inherit the start method ``loky``, which
    ``multiprocessing`` does not know; loky's own executor, which also starts fresh interpreters and
    has the same interface, is used there.
    """
    import multiprocessing as mp

    if mp.get_start_method(allow_none=True) == "loky":
        from joblib.externals.loky import ProcessPoolExecutor as LokyExecutor

        return LokyExecutor(n)
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"))
