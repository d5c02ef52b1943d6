"""Figure 6 of the paper: a heat map over the CT, drawn for one 2D slice or the three mid-planes of a 3D ROI.

Slices are drawn in the radiological convention (patient's right on the viewer's left, anterior up).
:func:`gradcam_figure` explains one model input and draws it: the entry point for other code
(``src.predict``, ``src.explain``). PNGs are written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from src.cam.maps import TARGET_LAYER, grad_cam
from src.cam.scores import localisation


def display(a: np.ndarray) -> np.ndarray:
    """A plane of a RAS-oriented array (axes x, y, z increasing to the patient's right, anterior,
    superior) as drawn on screen: axial (x, y) with anterior up and the patient's right on the
    viewer's left (radiological convention); coronal (x, z) and sagittal (y, z) with superior up."""
    return np.ascontiguousarray(np.asarray(a).T[::-1, ::-1])


def own_channel(sample: torch.Tensor) -> np.ndarray:
    """The image a heat map is drawn over: of one input ``(C, *spatial)``, its middle channel (the slice
    itself when ``data.context_slices`` stacks its neighbours around it; the only one otherwise)."""
    return sample[sample.shape[0] // 2].float().cpu().numpy()


def hu_window(level: float, width: float) -> tuple[float, float]:
    return level - width / 2.0, level + width / 2.0


def _title(meta: dict) -> str:
    bits = [str(meta[k]) for k in ("patient_id",) if meta.get(k) is not None]
    if meta.get("slice_index") is not None:
        bits.append(f"slice {meta['slice_index']}")
    if meta.get("label") is not None:
        bits.append(f"grade {'high' if int(meta['label']) else 'low'}")
    if meta.get("prob_high") is not None:
        bits.append(f"p(high)={meta['prob_high']:.2f}")
    if meta.get("class_index") is not None:
        bits.append(f"CAM for class {'high' if int(meta['class_index']) else 'low'}")
    if meta.get("cam_in_tumour") is not None and np.isfinite(meta["cam_in_tumour"]):
        bits.append(f"in tumour {meta['cam_in_tumour']:.2f} (chance {meta['cam_chance']:.2f}), "
                    f"pointing {'hit' if meta['cam_pointing'] >= 0.5 else 'miss'}")
    return " | ".join(bits)


def figure_2d(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None, out_path: str | Path,
              window: tuple[float, float], meta: dict | None = None, alpha: float = 0.45,
              cmap: str = "jet", dpi: int = 100) -> Path:
    """Paper Figure 6 layout for one slice: CT | heat map over CT (tumour outlined) | tumour location."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, heat = display(image), display(cam)
    m = display(mask) if mask is not None else None
    ncol = 3 if m is not None else 2
    fig, axes = plt.subplots(1, ncol, figsize=(3.0 * ncol, 3.35), dpi=dpi)
    vmin, vmax = window
    titles = ["CT", "Grad-CAM", "tumour location"]
    for ax, t in zip(axes, titles):
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    im = axes[1].imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    if m is not None and m.any():
        axes[1].contour(m.astype(float), levels=[0.5], colors="white", linewidths=0.8)
        axes[2].imshow(np.ma.masked_where(~m, m.astype(float)), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
        axes[2].contour(m.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    fig.suptitle(_title(meta or {}), fontsize=7)
    fig.tight_layout()
    return _save(fig, out_path, dpi)


def figure_3d(volume: np.ndarray, cam: np.ndarray, out_path: str | Path, window: tuple[float, float],
              meta: dict | None = None, mask: np.ndarray | None = None, alpha: float = 0.45,
              cmap: str = "jet", dpi: int = 100) -> Path:
    """Axial, coronal and sagittal mid-planes of an ROI cube: CT | heat map over CT (| tumour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cx, cy, cz = (s // 2 for s in volume.shape)
    planes = {"axial": (slice(None), slice(None), cz), "coronal": (slice(None), cy, slice(None)),
              "sagittal": (cx, slice(None), slice(None))}
    ncol = 3 if mask is not None else 2
    fig, axes = plt.subplots(3, ncol, figsize=(2.6 * ncol, 7.6), dpi=dpi)
    vmin, vmax = window
    for r, (name, idx) in enumerate(planes.items()):
        img, heat = display(volume[idx]), display(cam[idx])
        for c in range(ncol):
            axes[r, c].imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            axes[r, c].axis("off")
        axes[r, 1].imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
        axes[r, 0].set_title(f"{name}: CT", fontsize=8)
        axes[r, 1].set_title(f"{name}: Grad-CAM", fontsize=8)
        if mask is not None:
            m = display(mask[idx])
            if m.any():
                axes[r, 2].contour(m.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
                axes[r, 1].contour(m.astype(float), levels=[0.5], colors="white", linewidths=0.8)
            axes[r, 2].set_title(f"{name}: tumour", fontsize=8)
    fig.suptitle(_title(meta or {}), fontsize=7)
    fig.tight_layout()
    return _save(fig, out_path, dpi)


def _save(fig, out_path: str | Path, dpi: int) -> Path:
    import os

    import matplotlib.pyplot as plt

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def gradcam_figure(net: nn.Module, image_tensor: torch.Tensor, mask_or_None: np.ndarray | None, spatial_dims: int,
                   out_path: str | Path, class_index: int | None = 1, *, display_image: np.ndarray | None = None,
                   window: tuple[float, float] = (-2.0, 2.0), meta: dict | None = None,
                   target_layer: str = TARGET_LAYER, target: str = "logit") -> dict:
    """Grad-CAM of one model input and its Figure-6 PNG; the entry point for other code (src.predict).

    ``image_tensor``: the model's input for one sample, (C, *spatial) or (1, C, *spatial), as the
    network sees it (z-scored). ``mask_or_None``: bool tumour mask of the spatial shape (adds the
    tumour panel and, in 2D, the localisation scores). ``class_index``: the class to explain (1 =
    high grade; None = the predicted class). ``display_image``: what to draw under the heat map
    (e.g. the slice in HU, same shape) with ``window`` = (vmin, vmax) in its units; default the
    input itself. ``net`` is not modified (a copy is explained).

    Returns ``{"path", "cam" (spatial array in [0, 1]), "prob_high", "class_index"}`` and, with a
    2D mask, ``cam_in_tumour``, ``cam_pointing``, ``cam_chance``.
    """
    x = image_tensor if image_tensor.dim() == spatial_dims + 2 else image_tensor[None]
    if x.dim() != spatial_dims + 2 or len(x) != 1:
        raise ValueError(f"expected one {spatial_dims}D sample (C, *spatial), got shape {tuple(image_tensor.shape)}")
    cams, probs = grad_cam(net, x, class_index, target_layer=target_layer, target=target)
    cam, p = cams[0], probs[0]
    k = int(p.argmax()) if class_index is None else int(class_index)
    shown = np.asarray(display_image if display_image is not None else own_channel(x[0]))
    mask = None if mask_or_None is None else np.asarray(mask_or_None, dtype=bool)
    info = {**(meta or {}), "prob_high": float(p[-1]), "class_index": k}
    if mask is not None and spatial_dims == 2:
        info.update(localisation(cam, mask))
    if spatial_dims == 2:
        path = figure_2d(shown, cam, mask, out_path, window, info)
    else:
        path = figure_3d(shown, cam, out_path, window, info, mask=mask)
    return {**info, "path": path, "cam": cam}
