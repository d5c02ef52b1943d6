"""Grade a new patient with a trained model: python -m src.predict ckpt_path=CKPT image=PATH mask=PATH

``ckpt_path``: a checkpoint in a job folder (``JOB/checkpoints/*.ckpt``), or the job folder itself
(then its best checkpoint, else ``last.ckpt``); or a list of them (``ckpt_path=[FOLD0,FOLD1,...]``): an
ensemble, whose ``prob_high`` is the mean of its members', each member's result listed in ``members``.
Everything about the model comes from the job's ``JOB/.hydra/config.yaml``: supervision, phase,
network, preprocessing parameters, tumour label and (weak) the slice aggregation rule. ``image``: the
patient's CT of that phase, a NIfTI/NRRD/MHA file or a DICOM series folder; ``mask``: the tumour mask
(same geometry). The input goes through the same checks and the same preprocessing code as training
(``src.data.validate.check_pair``, ``src.data.preprocess.preprocess_case``), then:

- strong: the un-rotated ROI -> 3D network -> ``prob_high``; decision ``prob_high > threshold``
  (the job's ``callbacks.predictions.threshold``, ``src.stats.decide``);
- weak: every lesion slice -> 2D network -> ``src.callbacks.aggregation.aggregate_patient`` with
  the job's ``callbacks.predictions.aggregation`` config and threshold.

Prints one line and writes ``OUTPUT_DIR/<patient_id>.json`` (``prob_high``, ``pred`` 0/1,
``decision``, supervision, phase, aggregation details, slices for weak). The only identifier
written is ``patient_id`` (default ``patient``): never DICOM header fields, nor the input paths.

Checkpoints are loaded with ``torch.load(weights_only=True)``; the ``net.``-prefixed entries of the
Lightning ``state_dict`` are loaded into the network built from the job config.

``gradcam=true``: a Grad-CAM overlay of the high grade (``src.cam.figures.gradcam_figure``), PNG next to
the JSON.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from src.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)
DECISIONS = {0: "low grade (WHO/ISUP 1-2)", 1: "high grade (WHO/ISUP 3-4)"}


# ------------------------------------------------------------------------------------------ job folder
def resolve_checkpoint(ckpt_path: str | os.PathLike) -> tuple[Path, Path]:
    """(checkpoint file, job folder). A job folder picks its best checkpoint (else last.ckpt)."""
    from src.errors import InputError

    p = Path(ckpt_path)
    if p.is_dir():
        ckpts = sorted((p / "checkpoints").glob("*.ckpt"))
        best = [c for c in ckpts if c.name != "last.ckpt"]
        if not ckpts:
            raise InputError("no checkpoint in the job folder (expected checkpoints/*.ckpt)", path=str(p))
        return (best[-1] if best else ckpts[0]), p
    if not p.is_file():
        raise InputError("checkpoint not found", path=str(p))
    return p, p.parent.parent


def load_job_config(job_dir: Path) -> DictConfig:
    from src.errors import InputError

    cfg_file = job_dir / ".hydra" / "config.yaml"
    if not cfg_file.is_file():
        raise InputError("the checkpoint's job folder has no .hydra/config.yaml (expected JOB/checkpoints/X.ckpt "
                         "next to JOB/.hydra/)", path=str(cfg_file))
    return OmegaConf.load(cfg_file)


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def job_settings(job_cfg: DictConfig) -> dict:
    """What inference needs from a training job's config (only literal sub-trees are resolved)."""
    from src.errors import InputError

    try:
        agg = _container(OmegaConf.select(job_cfg, "callbacks.predictions.aggregation"))
        # jobs written before the threshold became the writer's own key kept it in the aggregation
        threshold = OmegaConf.select(job_cfg, "callbacks.predictions.threshold", default=agg.pop("threshold", None))
        if threshold is None:
            raise ValueError("no callbacks.predictions.threshold")
        return {
            "supervision": str(OmegaConf.select(job_cfg, "supervision.name")),
            "phase": str(OmegaConf.select(job_cfg, "phase.name")),
            "net": _container(job_cfg.model.net),
            "preprocess": _container(job_cfg.preprocess),
            "tumour_label": OmegaConf.select(job_cfg, "data.tumour_label", default=None),
            "aggregation": agg,
            "threshold": float(threshold),
            "cam_layer": OmegaConf.select(job_cfg, "model.cam_layer", default=None),
            "tta": str(OmegaConf.select(job_cfg, "model.tta", default="none")),
            "context_slices": int(OmegaConf.select(job_cfg, "data.context_slices", default=0) or 0),
        }
    except Exception as exc:  # a config that is not a training job's
        raise InputError(f"cannot read the job config ({type(exc).__name__}: {exc})") from None


def load_network(ckpt: Path, net_cfg: dict):
    """The network of the job config with the checkpoint's ``net.*`` weights, in eval mode."""
    from hydra.utils import instantiate

    from src.errors import InputError
    from src.utils.runtime import load_checkpoint_state

    # the checkpoint holds every weight: a pretrained file the job started from is not needed here
    net = instantiate({**net_cfg, "pretrained": None} if "pretrained" in net_cfg else net_cfg)
    try:
        net_sd = load_checkpoint_state(ckpt)
    except ValueError as exc:
        raise InputError(str(exc), path=str(ckpt)) from None
    except Exception as exc:
        raise InputError(f"cannot load checkpoint ({type(exc).__name__}: {str(exc)[:160]})", path=str(ckpt)) from None
    try:
        net.load_state_dict(net_sd)
    except RuntimeError as exc:
        raise InputError(f"checkpoint does not match the job's network ({str(exc).splitlines()[0][:160]})",
                         path=str(ckpt)) from None
    return net.eval()


# ------------------------------------------------------------------------------------------ inference
def preprocess_input(settings: dict, image: Path, mask: Path, patient_id: str, tumour_label) -> dict:
    """The training code's checks and preprocessing for one new patient (nothing is cached)."""
    from src.data.manifest import Case
    from src.data.preprocess import preprocess_case
    from src.data.validate import check_pair
    from src.errors import InputError

    several: list = []
    problems = check_pair(image, mask, patient_id, tumour_label, read_pixels=True, labels=several)  # read it all
    for pid, path, values in several:
        log.warning("patient %s, file %s: the mask holds labels %s; with tumour_label unset every voxel > 0 is "
                    "tumour (tumour_label=N names the tumour's)", pid, path, values)
    if len(problems) == 1:
        raise InputError(problems[0].message, problems[0].patient_id, problems[0].path)
    if problems:
        raise InputError("\n".join(str(p) for p in problems))
    return preprocess_case(Case(patient_id, 1, Path(image), Path(mask)), settings["supervision"],
                           settings["preprocess"], tumour_label)


def normalise_input(settings: dict, ckpt: Path, arrays: dict) -> dict:
    """``preprocess.intensity=zscore_dataset``: the images mapped with the training set's mean and SD,
    as the job saved them in its checkpoint (other modes are complete after preprocessing)."""
    if settings["preprocess"]["intensity"] != "zscore_dataset":
        return arrays
    import numpy as np

    from src.errors import InputError
    from src.utils.runtime import load_intensity_stats

    stats = load_intensity_stats(ckpt)
    if not stats:
        raise InputError("checkpoint lacks the training-set intensity statistics zscore_dataset needs", path=str(ckpt))
    key = "rois" if settings["supervision"] == "strong" else "slices"
    x = (np.asarray(arrays[key], dtype=np.float32) - np.float32(stats["mean"])) / np.float32(stats["sd"])
    return {**arrays, key: x}


def _decision(logits, threshold: float) -> dict:
    """The patient's P(high), decision and threshold from the network's (1, 2) logits."""
    from src.stats import decide

    prob = float(logits.float().softmax(-1)[0, 1])
    return {"prob_high": prob, "pred": int(decide(prob, threshold)), "threshold": threshold}


def cpu_bf16_job(job_dir: Path) -> bool:
    """Whether the job trained and tested on a CPU under bf16 autocast, as its ``config_resolved.yaml`` (the
    settings resolved on the machine it ran on) records. Its test predictions were computed that way, so
    inference does the same to give the same P(high) (float32 moves a slice's by up to ~2e-3). Jobs trained on a
    GPU, and jobs without that file, are predicted in float32 (a CPU does not reproduce GPU bf16 kernels)."""
    from src.utils.runtime import RESOLVED_CONFIG

    resolved = job_dir / RESOLVED_CONFIG
    if not resolved.is_file():
        return False
    trainer = OmegaConf.select(OmegaConf.load(resolved), "trainer", default={}) or {}
    return str(trainer.get("accelerator")) == "cpu" and str(trainer.get("precision", "")).startswith("bf16")


def predict_arrays(net, settings: dict, arrays: dict, batch_size: int = 64) -> dict:
    """Patient-level result from preprocessed arrays; the network's outputs under CPU bf16 autocast when
    ``settings["cpu_bf16"]`` (the job's own test precision, ``cpu_bf16_job``)."""
    import numpy as np
    import torch

    from src.data.bank import with_context
    from src.models.tta import tta_logits

    mode, k = settings["tta"], int(settings.get("context_slices", 0))

    def logits(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(settings.get("cpu_bf16"))):
            return tta_logits(net, x, mode).float()

    with torch.no_grad():
        if settings["supervision"] == "strong":
            angles = [float(a) for a in arrays["angles"]]
            x = torch.from_numpy(np.asarray(arrays["rois"][angles.index(0.0)], dtype=np.float32))[None, None]
            return {**_decision(logits(x), settings["threshold"]), "input": x[0]}
        slices = with_context(torch.from_numpy(np.asarray(arrays["slices"], dtype=np.float32)),
                              arrays["slice_index"], k)  # (n, 2k + 1, H, W)
        if settings["supervision"] == "mil":  # every lesion slice as one bag: one prediction for the patient
            return {**_decision(logits(slices[None]), settings["threshold"]),
                    "slices": [{"slice_index": int(z)} for z in np.asarray(arrays["slice_index"])]}
        from src.callbacks.aggregation import aggregate_patient

        probs = torch.cat([logits(slices[i:i + batch_size]).softmax(-1) for i in range(0, len(slices), batch_size)])
        probs = probs.numpy().astype(np.float64)
        probs /= probs.sum(1, keepdims=True)
        width = int(settings["preprocess"]["slice_size"][-1])
        masks = np.unpackbits(np.asarray(arrays["masks"]), axis=-1, count=width).astype(bool)
        z = np.asarray(arrays["slice_index"]).astype(int)
        agg = settings["aggregation"]
        from src.callbacks.cam_regions import cam_masks, rule_options, uses_cam

        regions = cam_masks(net, slices, settings["cam_layer"], agg["cam_threshold"]) if uses_cam(agg) else masks
        res = aggregate_patient(z, probs, regions, threshold=settings["threshold"], **rule_options(agg))
        return {"prob_high": float(res.prob_high), "pred": int(res.pred), "threshold": settings["threshold"],
                "aggregation": agg, "aggregation_info": _jsonable(res.info),
                "slices": [{"slice_index": int(k), "prob_high": float(p)} for k, p in zip(z, probs[:, 1])],
                "input": slices, "masks": masks}


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def gradcam_hook(net, settings: dict, result: dict, out_dir: Path, patient_id: str) -> str:
    """Grad-CAM overlay (``src.cam.figures.gradcam_figure``) of the input the model saw, for the high grade;
    returns the PNG path."""
    from src.cam import figures

    out = out_dir / f"{patient_id}_gradcam.png"
    meta = {"patient_id": patient_id, "supervision": settings["supervision"], "phase": settings["phase"]}
    if settings["supervision"] == "strong":
        info = figures.gradcam_figure(net, result["input"], None, 3, out, class_index=1, meta=meta)
    else:  # the lesion slice with the largest tumour area
        k = int(result["masks"].reshape(len(result["masks"]), -1).sum(1).argmax())
        info = figures.gradcam_figure(net, result["input"][k], result["masks"][k], 2, out, class_index=1, meta=meta)
    return str(info.get("path", out))


def checkpoint_list(ckpt_path) -> list:
    """``ckpt_path`` as a list: one path, or several (``ckpt_path=[A,B,C]``: an ensemble, e.g. the folds)."""
    from omegaconf import ListConfig

    if isinstance(ckpt_path, (list, tuple, ListConfig)):
        return list(ckpt_path)
    return [ckpt_path]


def _member(ckpt_path) -> dict:
    ckpt, job_dir = resolve_checkpoint(ckpt_path)
    return {"ckpt": ckpt, "settings": {**job_settings(load_job_config(job_dir)), "cpu_bf16": cpu_bf16_job(job_dir)}}


def _check_ensemble(members: list[dict]) -> None:
    """The members of an ensemble grade the same input the same way: supervision, phase, threshold."""
    from src.errors import InputError

    first = members[0]["settings"]
    for m in members[1:]:
        for key in ("supervision", "phase", "threshold"):
            if m["settings"][key] != first[key]:
                raise InputError(f"ensemble members differ in {key} ({first[key]} vs {m['settings'][key]})",
                                 path=str(m["ckpt"]))


def predict(ckpt_path, image, mask, patient_id: str = "patient", output_dir=None, tumour_label="job",
            batch_size: int = 64, gradcam: bool = False) -> dict:
    """Run inference for one patient; writes ``output_dir/<patient_id>.json`` (when given); returns it.

    ``ckpt_path``: one checkpoint (or job folder), or a list of them: an ensemble whose ``prob_high`` is
    the mean of its members' (each with its own preprocessing settings and normalisation), decided with
    their common threshold; each member's result is in ``members``.
    """
    from src.errors import InputError
    from src.stats import decide

    patient_id = str(patient_id).strip()
    if not patient_id or any(c in patient_id for c in "/\\"):
        raise InputError(f"patient_id '{patient_id}' must be non-empty and contain no path separator")
    paths = checkpoint_list(ckpt_path)
    if not paths:
        raise InputError("ckpt_path is an empty list")
    members = [_member(p) for p in paths]
    _check_ensemble(members)
    settings = members[0]["settings"]
    if gradcam and settings["supervision"] == "mil":
        raise InputError("gradcam=true: Grad-CAM here explains single-image networks; a mil job's maps come "
                         "from its whole bag: python -m src.explain ckpt_path=... score=true")
    if gradcam and len(members) > 1:
        raise InputError("gradcam=true explains one checkpoint; an ensemble has several")
    prepared: dict[str, dict] = {}  # members with the same preprocessing and label share one pass
    for m in members:
        s = m["settings"]
        label = s["tumour_label"] if tumour_label == "job" else tumour_label
        key = json.dumps([s["supervision"], s["preprocess"], label], sort_keys=True, default=str)
        if key not in prepared:
            prepared[key] = preprocess_input(s, Path(image), Path(mask), patient_id, label)
        m["net"] = load_network(m["ckpt"], s["net"])
        m["result"] = predict_arrays(m["net"], s, normalise_input(s, m["ckpt"], prepared[key]), batch_size=batch_size)
    result = members[0]["result"]
    out = {"patient_id": patient_id, "prob_high": result["prob_high"], "pred": result["pred"],
           "threshold": result["threshold"], "supervision": settings["supervision"], "phase": settings["phase"],
           "checkpoint": str(members[0]["ckpt"].resolve())}
    if len(members) > 1:
        prob = float(sum(m["result"]["prob_high"] for m in members) / len(members))
        out.update(prob_high=prob, pred=int(decide(prob, settings["threshold"])),
                   checkpoint=[str(m["ckpt"].resolve()) for m in members], ensemble="mean of the members' prob_high",
                   members=[{"checkpoint": str(m["ckpt"].resolve()), "prob_high": m["result"]["prob_high"],
                             "pred": m["result"]["pred"]} for m in members])
    else:
        for k in ("aggregation", "aggregation_info", "slices"):
            if k in result:
                out[k] = result[k]
    out["decision"] = DECISIONS[out["pred"]]
    if output_dir is not None:
        out_dir = Path(output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if gradcam:
            out["gradcam"] = gradcam_hook(members[0]["net"], settings, result, out_dir, patient_id)
        path = out_dir / f"{patient_id}.json"
        atomic_write_text(path, json.dumps(out, indent=2) + "\n")
        out["json"] = str(path)
    elif gradcam:
        raise InputError("gradcam=true needs an output_dir")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from src.errors import InputError

    try:
        out = predict(cfg.ckpt_path, cfg.image, cfg.mask, patient_id=cfg.patient_id, output_dir=cfg.output_dir,
                      tumour_label=cfg.tumour_label, batch_size=cfg.batch_size, gradcam=cfg.gradcam)
    except InputError as exc:  # a user error: no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    model = f"ensemble of {len(out['members'])} {out['supervision']} models" if "members" in out \
        else f"{out['supervision']} model"
    print(f"patient {out['patient_id']}: P(high grade) = {out['prob_high']:.3f} -> {out['decision']} "
          f"({model}, {out['phase']}); written to {out['json']}")


if __name__ == "__main__":
    main()
