"""Performance benchmark of one job's configuration: ``python -m src.bench [hydra overrides]``.

Composes ``conf/train.yaml`` + ``conf/bench/default.yaml`` (as ``+bench=default``) with the given
overrides, exactly like ``python -m src.train`` would, and measures the sections in
``bench.sections``, one module each:

- ``startup`` (``src/bench/startup.py``): wall time of ``python -m src.train --cfg job`` (subprocess,
  median of repeats) and the time to the first training step of a real job (subprocess: interpreter
  start -> first optimiser step, on the job's cache);
- ``preprocess`` (``preprocess.py``): patients/s per phase and supervision into a fresh cache, then a
  second datamodule on the same cache (``datamodule.stats``: must preprocess 0), and the fp16 storage
  error of z-scored slices;
- ``train`` (``train.py``): steady-state samples/s of Lightning ``Trainer.fit`` with the real
  ``GradeModule``, ``GradeDataModule`` and per-step callbacks (logger, checkpointing and validation
  off) against a bare PyTorch loop on the same network, optimiser, cached tensors, batch size,
  threads, precision and memory format; interleaved repeats, medians, and their ratio (goal <= 1.05);
- ``memory`` (``memory.py``): peak resident memory of preprocessing (``prepare_data``, in-process) and
  of ``setup``, in a fresh subprocess per cohort size, with the size of the cache written.

Prints a table (``report.py``) and writes JSON (the path is printed). Other commands:
``python -m src.bench --prepare [overrides]`` only generates the cohort and fills the cache of all
six phase x supervision jobs (``prepare.py``), as ``scripts/gpu_bench.sh`` does first;
``--first-step`` and ``--probe-memory`` are the child processes of ``startup`` and ``memory``.
Shared helpers are in ``common.py``, the entry point in ``cli.py``. No module imports torch,
Lightning or Hydra at its top level.

The throughput callback for real jobs is :class:`src.callbacks.throughput.ThroughputMonitor`.
"""
