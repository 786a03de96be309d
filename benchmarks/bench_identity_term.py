"""The identity term's own cost at SD1.5 size: the real-size VAE decoder (random weights) and
dlib's embedder, forward + backward, whole image decoded vs the face window only, one run.

Peak memory ~2.6 GB (no UNet), so it runs beside other jobs. With the identity term's share
of a whole IDE-Net step measured by ``bench_training.py`` (whole-image decode), the ratio
measured here gives the face window's step overhead.

    python benchmarks/bench_identity_term.py benchmarks/results/training_identity_term_cpu.json
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from instantportrait.components import SD_VAE_CONFIG
from instantportrait.data.dataset import detect_landmarks5, pil_to_tensor
from instantportrait.faces.align import crop_faces, to_grayscale
from instantportrait.faces.embedders import get_embedder
from instantportrait.io import load_image
from instantportrait.training.idenet import latent_face_windows
from instantportrait.writer import atomic_write

torch.manual_seed(0)
res = 256
img = load_image(Path(__file__).resolve().parents[1] / "examples" / "astronaut.png")
side = min(img.size)
img = img.crop((0, 0, side, side)).resize((res, res))
lm = torch.from_numpy(detect_landmarks5()(img)).unsqueeze(0)
x_in = pil_to_tensor(img).unsqueeze(0)
vae = AutoencoderKL(**SD_VAE_CONFIG).eval().requires_grad_(False)
emb = get_embedder("dlib")
z = torch.randn(1, 4, res // 8, res // 8)
sf = vae.config.scaling_factor


def term(window, margin=0.75):
    zz = z.clone().requires_grad_(True)
    if window:
        corners, ww, wh = latent_face_windows(lm, (res // 8, res // 8), 8, margin)
        x, y = corners[0].tolist()
        dec = vae.decode(zz[:, :, y : y + wh, x : x + ww] / sf).sample.clamp(-1, 1) / 2 + 0.5
        lm_dec = lm - corners.to(lm).unsqueeze(1) * 8
    else:
        dec = vae.decode(zz / sf).sample.clamp(-1, 1) / 2 + 0.5
        lm_dec = lm
    with torch.no_grad():
        ref = emb.embed(
            to_grayscale(crop_faces((x_in / 2 + 0.5).clamp(0, 1), lm, emb.template, emb.input_size))
        )
    hat = emb.embed(to_grayscale(crop_faces(dec, lm_dec, emb.template, emb.input_size)))
    ((ref - hat) ** 2).sum().backward()
    return dec.shape[-1]


def interleaved(fns: dict, n: int = 3) -> dict:
    """Median seconds of each function, the calls interleaved (a load change hits all alike)."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: sorted(v)[n // 2] for k, v in times.items()}


out = {"resolution": res, "window_side_px": term(True)}
out.update(
    interleaved({"full_decode_s": lambda: term(False), "face_window_s": lambda: term(True)}, 5)
)
out["window_over_full"] = out["face_window_s"] / out["full_decode_s"]
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps(out, indent=1))
text = json.dumps(out, indent=2)
atomic_write(sys.argv[1], lambda p: p.write_text(text))
