"""Grad-CAM figure(s) of one patient from a trained job: the paper's Figure 6 on demand.

Usage (from the folder training ran in, so that the job's relative data paths resolve)::

    python -m src.explain ckpt_path=outputs/runs/<job>/checkpoints/last.ckpt patient_id=SYN0002
    python -m src.explain ckpt_path=... slice_index=all class_index=1 out_dir=/tmp/cams

Options and defaults: ``conf/explain.yaml``. The job folder is the checkpoint's folder's parent;
its ``.hydra/config.yaml`` rebuilds the network and the datamodule (which reads the preprocessing
cache). The checkpoint's ``state_dict`` is loaded with ``torch.load(weights_only=True)`` (keys
``net.*``). Weak jobs: one PNG per slice (CT | heat map | tumour location), the CT drawn in HU
with W400/L40 from the original image (``hu=true``); strong jobs: one PNG with the ROI's axial,
coronal and sagittal mid-planes (z-scored ROI; the cache holds no ROI mask). Prints the paths.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
CONF = Path(__file__).resolve().parents[1] / "conf" / "explain.yaml"


def job_config(ckpt_path: str | Path) -> tuple[Path, DictConfig]:
    """(job folder, its saved config) for a checkpoint in ``JOB/checkpoints/``."""
    from src.errors import InputError

    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise InputError("checkpoint not found", path=str(ckpt))
    job = ckpt.resolve().parent.parent
    saved = job / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise InputError("no .hydra/config.yaml in the job folder (the checkpoint's folder's parent)", path=str(saved))
    cfg = OmegaConf.load(saved)
    with open_dict(cfg):
        cfg.paths.output_dir = str(job)  # the saved value is a ${hydra:...} interpolation
    return job, cfg


def load_net(cfg: DictConfig, ckpt_path: str | Path):
    """The job's network with the checkpoint's weights (``net.*`` keys of its state_dict)."""
    from hydra.utils import instantiate

    from src.utils.runtime import load_checkpoint_state

    net_cfg = OmegaConf.to_container(cfg.model.net, resolve=True)
    if "pretrained" in net_cfg:  # the checkpoint holds every weight
        net_cfg["pretrained"] = None
    net = instantiate(net_cfg)
    net.load_state_dict(load_checkpoint_state(ckpt_path))
    return net.eval()


def hu_slices(dm, patient: int) -> dict:
    """{slice_index: (H, W) HU slice} of one patient: the job's weak preprocessing (field of view and
    size included) without the intensity transform, so the slice lies exactly under the heat map."""
    import numpy as np
    from monai.transforms import Identityd

    from src.data.io import read_image
    from src.data.manifest import cases_for_phase
    from src.data.preprocess import KEYS, preprocess_weak

    case = cases_for_phase(dm.manifest_path(), dm.phase)[patient]
    out = preprocess_weak(read_image(case.image, case.patient_id), read_image(case.mask, case.patient_id),
                          size=tuple(dm.pp["slice_size"]), tumour_label=dm.tumour_label,
                          min_voxels=dm.pp["min_tumour_voxels"], fov_mm=dm.pp.get("weak_fov_mm"),
                          intensity=Identityd(keys=KEYS), lesion=dm.pp.get("lesion", "all"),
                          slab_mm=dm.pp.get("weak_slice_mm"))
    return {int(z): np.asarray(img, dtype=np.float32) for z, img in zip(out["slice_index"], out["slices"])}


def score(dm, net, gc, out_dir: Path, class_index, window_z, target_layer, target) -> list[Path]:
    """The callback's test pass on a checkpoint: figures for ``n_patients`` test patients and, weak,
    the localisation score over the test set (``out_dir/test_scores.csv``); prints the metrics."""
    import json

    from src.callbacks.gradcam import GradCamCallback

    kw = OmegaConf.to_container(gc, resolve=True) if isinstance(gc, DictConfig) else dict(gc)
    kw = {k: v for k, v in kw.items() if not k.startswith("_")}
    kw.update(output_dir=str(out_dir), class_index=class_index, window_z=list(window_z), target_layer=target_layer,
              target=target)
    metrics, paths = GradCamCallback(**kw).compute(dm, net, "test", "test", score_all=True)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return paths


def explain(opts: DictConfig) -> list[Path]:
    import numpy as np
    import torch
    from hydra.utils import instantiate

    from src.cam.figures import gradcam_figure, hu_window
    from src.errors import InputError

    job, cfg = job_config(opts.ckpt_path)
    if cfg.supervision.name == "mil" and not opts.score:
        raise InputError("a mil job is explained over its testing set, each patient's bag at once: add score=true",
                         path=str(opts.ckpt_path))
    net = load_net(cfg, opts.ckpt_path)
    gc = cfg.get("callbacks", {}).get("gradcam") or {}
    class_index = opts.class_index if opts.class_index is not None else gc.get("class_index")
    window_z = tuple(opts.window_z if opts.window_z is not None else gc.get("window_z", (-2.0, 2.0)))
    target_layer = opts.target_layer or gc.get("target_layer", "layer4")
    target = opts.target or gc.get("target", "logit")
    out_dir = Path(opts.out_dir) if opts.out_dir else job / "gradcam" / "explain"

    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("test")
    if opts.score:
        return score(dm, net, gc, out_dir, class_index, window_z, target_layer, target)
    pid = opts.patient_id
    if pid is None:
        test = dm.datasets["test"].tensors["patient"]
        pid = dm.patient_ids[int(test.min())]
    pid = str(pid)
    if pid not in dm.patient_ids:
        raise InputError(f"patient '{pid}' is not in this job's cohort ({len(dm.patient_ids)} patients)")
    p = dm.patient_ids.index(pid)
    split = "test" if dm.splits.get(pid) == "test" else "train"
    t = dm.datasets[split].tensors
    rows = torch.nonzero(t["patient"] == p).flatten()
    slices = t["slice"][rows]
    meta = {"patient_id": pid, "label": int(t["label"][rows[0]])}
    paths: list[Path] = []
    if dm.supervision == "strong":
        res = gradcam_figure(net, t["image"][rows[0]].float(), None, 3, out_dir / f"{pid}_roi.png",
                             class_index=class_index, window=window_z, meta=meta, target_layer=target_layer,
                             target=target)
        return [res["path"]]
    order = torch.argsort(slices)
    rows, slices = rows[order], slices[order]
    areas = [int(dm.slice_mask(p, int(z)).sum()) for z in slices]
    if opts.slice_index is None:
        keep = [int(np.argmax(areas))]
    elif str(opts.slice_index) == "all":
        keep = list(range(len(rows)))
    else:
        hits = [i for i, z in enumerate(slices.tolist()) if z == int(opts.slice_index)]
        if not hits:
            raise InputError(f"slice {opts.slice_index} is not a lesion slice of {pid} "
                             f"(lesion slices: {slices.tolist()})")
        keep = hits
    hu = {}
    if opts.hu:
        try:
            hu = hu_slices(dm, p)
        except Exception as exc:  # noqa: BLE001 - the figure still works from the z-scored input
            log.warning("original CT unreadable (%s): drawing the z-scored input", exc)
    for i in keep:
        z = int(slices[i])
        shown = hu.get(z)
        window = hu_window(*opts.window_hu) if shown is not None else window_z
        res = gradcam_figure(net, t["image"][rows[i]].float(), dm.slice_mask(p, z), 2,
                             out_dir / f"{pid}_slice{z:03d}.png", class_index=class_index, display_image=shown,
                             window=window, meta={**meta, "slice_index": z}, target_layer=target_layer,
                             target=target)
        paths.append(res["path"])
        log.info("%s slice %d: p(high)=%.3f, in tumour %.3f (chance %.3f), pointing %.2f", pid, z,
                 res["prob_high"], res["cam_in_tumour"], res["cam_chance"], res["cam_pointing"])
    return paths


def main(argv: list[str] | None = None) -> int:
    from src.utils.cli import dotlist_main

    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's database layer announces its plugins
    return dotlist_main(__doc__, CONF, explain, argv)


if __name__ == "__main__":
    raise SystemExit(main())
