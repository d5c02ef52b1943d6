"""Does the weak model read the tumour? Test-set AUC (slice, patient) of a weak checkpoint on its
cached inputs as they are, with the tumour (mask dilated 3 px) filled with the median of a ring around
it, and with everything but the tumour and a 6 px margin filled the same way.

    python docs/results/v3_cpu_recipe/occlusion.py JOB/checkpoints/epochNNN-....ckpt   (from the repo root)
"""
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from scipy import ndimage
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from src.explain import job_config, load_net  # noqa: E402

ck = sys.argv[1]
job, cfg = job_config(ck)
net = load_net(cfg, ck)
dm = instantiate(cfg.data, _convert_="all")
dm.prepare_data()
dm.setup("test")
t = dm.datasets["test"].tensors
img = t["image"].float()
pat, sl, y = t["patient"].numpy(), t["slice"].numpy(), t["label"].numpy()
masks = np.stack([dm.slice_mask(int(pat[i]), int(sl[i])) for i in range(len(img))])
def prob(x):
    with torch.no_grad():
        return torch.cat([net(x[j:j+64]).softmax(-1)[:, 1] for j in range(0, len(x), 64)]).numpy()
def pauc(p):
    import pandas as pd
    d = pd.DataFrame({"p": pat, "y": y, "q": p}).groupby("p").mean()
    return roc_auc_score(y, p), roc_auc_score(d.y, d.q)
print("slice AUC, patient AUC (mean of its slices):", "as cached", pauc(prob(img)))
a, b = img.clone(), img.clone()
for i in range(len(img)):
    m = ndimage.binary_dilation(masks[i], iterations=3)
    ring = ndimage.binary_dilation(m, iterations=4) & ~m
    fill = float(np.median(img[i,0].numpy()[ring]))
    a[i,0][torch.as_tensor(m)] = fill          # tumour removed
    keep = ndimage.binary_dilation(masks[i], iterations=6)
    b[i,0][~torch.as_tensor(keep)] = fill        # only tumour + margin
print("tumour removed", pauc(prob(a)))
print("only tumour+margin", pauc(prob(b)))
