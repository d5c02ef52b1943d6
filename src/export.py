"""Export a trained network for deployment: python -m src.export ckpt_path=CKPT format=torchscript|onnx

``ckpt_path``: a checkpoint in a job folder (or the job folder: its best checkpoint). The exported model
maps the network's input to P(low), P(high) (softmax of the logits), batch size free:

- strong: (N, 1, D, H, W) ROIs, as the job's preprocessing makes them (``src.data.preprocess``);
- weak: (N, 1, H, W) lesion slices; the patient decision (the chain rule over slices) stays in
  ``src.predict`` / ``src.callbacks.aggregation``, outside the exported graph;
- mil: (B, N, 1, H, W), N slices per patient free.

Written next to the job: ``JOB/export/model.pt`` (TorchScript, ``torch.jit.trace``) or
``JOB/export/model.onnx`` (``torch.onnx.export``), and ``model.json`` (supervision, phase, input shape,
preprocessing, threshold, aggregation: what a deployment needs to prepare the input and decide). The
export is checked before it is kept: the exported model and the checkpoint's network must give the same
probabilities (``atol``, conf/export.yaml) on ``check_samples`` random inputs; a mismatch is an error
and nothing is written. Options: ``conf/export.yaml``.
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[1] / "conf" / "export.yaml"
FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}


def probabilities(net, tta: str = "none"):
    """``net`` followed by a softmax over its two classes, in eval mode; ``tta``: the job's test-time
    augmentation (``src/models/tta.py``), part of the exported graph."""
    import torch

    from src.models.tta import axial_plane, tta_logits

    class Probabilities(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.tta, self.plane = inner, tta, axial_plane(inner)

        def forward(self, x):
            return torch.softmax(tta_logits(self.inner, x, self.tta, self.plane).float(), dim=-1)

    return Probabilities(net).eval()


def example_input(settings: dict, n: int, generator=None):
    """Random inputs of the job's shape: ``n`` samples (mil: one bag of ``n`` slices)."""
    import torch

    pp = settings["preprocess"]
    channels = int(settings["net"].get("in_channels", 1))  # 2D: the slice and its neighbours (data.context_slices)
    if settings["supervision"] == "strong":
        shape = (n, channels, *[int(v) for v in pp["roi_size"]])
    elif settings["supervision"] == "mil":
        shape = (1, n, channels, *[int(v) for v in pp["slice_size"]])
    else:
        shape = (n, channels, *[int(v) for v in pp["slice_size"]])
    return torch.randn(*shape, generator=generator)


def _export(model, example, fmt: str, out: Path, settings: dict) -> None:
    import torch

    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(out))
        return
    axes = {0: "batch", 1: "slices"} if settings["supervision"] == "mil" else {0: "batch"}
    torch.onnx.export(model, (example,), str(out), input_names=["image"], output_names=["probabilities"],
                      dynamic_axes={"image": axes, "probabilities": {0: "batch"}}, dynamo=False)


def _run_exported(fmt: str, path: Path, x):
    import numpy as np
    import torch

    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(x).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": x.numpy()})[0])


def export(opts: DictConfig) -> Path:
    import numpy as np
    import torch

    from src.errors import InputError
    from src.predict import job_settings, load_job_config, load_network, resolve_checkpoint
    from src.utils.atomic import atomic_write_text

    fmt = str(opts.format)
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    ckpt, job = resolve_checkpoint(opts.ckpt_path)
    settings = job_settings(load_job_config(job))
    model = probabilities(load_network(ckpt, settings["net"]), settings["tta"])
    out_dir = Path(opts.out_dir) if opts.out_dir else job / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / FORMATS[fmt]
    tmp = out.with_name(f".{out.name}.tmp")
    gen = torch.Generator().manual_seed(int(opts.seed))
    _export(model, example_input(settings, 2, gen), fmt, tmp, settings)
    worst = 0.0
    for n in (1, int(opts.check_samples)):  # another batch size (mil: bag size) than the traced one
        x = example_input(settings, n, gen)
        with torch.no_grad():
            want = model(x).numpy()
        got = _run_exported(fmt, tmp, x)
        worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= float(opts.atol):
        tmp.unlink(missing_ok=True)
        raise InputError(f"the exported {fmt} model differs from the checkpoint by {worst:.2e} (> atol {opts.atol})",
                         path=str(ckpt))
    tmp.replace(out)
    meta = {"format": fmt, "file": out.name, "checkpoint": str(ckpt.resolve()), "supervision": settings["supervision"],
            "phase": settings["phase"], "input": list(example_input(settings, 1).shape), "input_batch_axis": 0,
            "test_time_augmentation": settings["tta"],
            "output": "probabilities (N, 2): P(low grade), P(high grade)", "threshold": settings["threshold"],
            "decision": "high grade iff P(high) > threshold", "preprocess": settings["preprocess"],
            "aggregation": settings["aggregation"] if settings["supervision"] == "weak" else None,
            "max_abs_difference_at_export": worst}
    atomic_write_text(out_dir / "model.json", json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    from src.utils.cli import dotlist_main

    return dotlist_main(__doc__, CONF, export, argv)


if __name__ == "__main__":
    raise SystemExit(main())
