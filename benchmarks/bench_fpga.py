"""FPGA's costs: the Clone Face Tuning iteration and multi-ID inference.

Measures in one run, on architectures built from config (speed does not depend on weights):

* training: one ID-ControlNet training step (frozen encoders, resampler, ControlNet + frozen
  UNet forward, backward; the optimizer update is left out, it does not depend on the loss)
  on a normal iteration and on a Clone Face Tuning iteration (splice, ID-attention capture
  with explicit attention probabilities, eq. 2); the ratio is CFT's overhead;
* inference: one sampling step (CFG batch of 2, ControlNet + UNet) with 1, 2 and 4
  identities under mask-guided multi-ID attention; ratios to one identity (the paper
  claims near-constant cost). F_id is given, so ID encoding (once per image) is left out.

``--size real`` is SD1.5 + an ID-ControlNet from its UNet + the spec's resampler +
ViT-H/14 + an iresnet100 ArcFace, random weights; wrap it in ``flock /tmp/realsize.lock``
on a shared machine (~11 GB). ``--size tiny`` runs in seconds.

    flock /tmp/realsize.lock python benchmarks/bench_fpga.py --size real --resolution 128
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Fastest seconds of each ``fns[name]()`` over ``repeats`` rounds, after one warm-up
    round; the variants alternate within each round, so a machine shared with other jobs
    slows them alike, and the minimum is the least disturbed run."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return {k: float(min(v)) for k, v in times.items()}


def flops(fn) -> int:
    """FLOPs of one ``fn()`` counted by torch's FlopCounterMode (deterministic, load-free)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def make_portraits(folder: Path, resolution: int, template: str) -> Path:
    """Two synthetic portrait rows (noise images, a face box, 68 points, keypoints)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "faces", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    r = resolution
    for i in range(2):
        key = f"{i:04d}"
        Image.fromarray(rng.integers(0, 255, (r, r, 3), dtype=np.uint8)).save(
            folder / "images" / f"{key}.png"
        )
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(
            folder / "faces" / f"{key}.png"
        )
        Image.fromarray(np.zeros((r, r), np.uint8)).save(folder / "masks" / f"{key}.png")
        a = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        cx, cy, s = r * 0.55, r * 0.3, r * 0.12
        lm = np.stack([cx + s * np.cos(a), cy + s * np.sin(a)], axis=1)
        kps = np.zeros((1, 18, 3))
        kps[0, :, 0], kps[0, :, 1], kps[0, :, 2] = cx, np.linspace(cy, r * 0.95, 18), 1
        rows.append(
            {
                "key": key,
                "caption": "a person in a park",
                "image": f"images/{key}.png",
                "face": f"faces/{key}.png",
                "mask": f"masks/{key}.png",
                "landmarks": lm.tolist(),
                "face_box": [cx - s, cy - s, cx + s, cy + s],
                "keypoints": kps.tolist(),
            }  # fmt: skip
        )
    (folder / "portraits.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    meta = {"format": "instantportrait-portraits-1", "face_template": template, "face_size": 224}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def bench_training(size: str, resolution: int, repeats: int, device: torch.device) -> dict:
    from instantportrait.cli.train import resolve
    from instantportrait.training.fpga import FPGATrainer

    embedder = None
    template = "dlib"
    if size == "real":
        from instantportrait.faces.arcface import ArcFaceEmbedder, iresnet100

        embedder, template = ArcFaceEmbedder(iresnet100()), "arcface"
    tmp = Path(tempfile.mkdtemp(prefix="bench_fpga_"))
    data = make_portraits(tmp / "data", resolution, template)
    cfg, _ = resolve(
        "fpga",
        None,
        [
            f"data.path={data}",
            f"model.pretrained={'tiny' if size == 'tiny' else 'random-real'}",
            "model.face_embedder=dlib",
            f"data.resolution={resolution}",
            "data.dropout_text=0",
            f"training.output_dir={tmp / 'run'}",
            "training.mixed_precision=no",
            "training.tensorboard=false",
            "training.batch_size=1",
        ],  # fmt: skip
    )
    trainer = FPGATrainer(cfg, face_embedder=embedder)
    trainer.setup()
    batch = trainer.collate([trainer.dataset[(0, 0)]])
    model = trainer.accelerator.unwrap_model(trainer.model)

    def step(cft: bool):
        def run():
            terms = trainer.compute_loss(batch, torch.Generator().manual_seed(0), cft)
            terms["loss"].backward()
            model.zero_grad(set_to_none=True)

        return run

    t = interleaved({"normal": step(False), "cft": step(True)}, repeats)
    normal, cft = t["normal"], t["cft"]
    f_normal, f_cft = flops(step(False)), flops(step(True))
    params = sum(p.numel() for p in model.parameters())
    gc.collect()
    return {
        "normal_step_s": round(normal, 4),
        "cft_step_s": round(cft, 4),
        "cft_over_normal": round(cft / normal, 3),
        "average_step_ratio_with_cft_every_10": round((9 * normal + cft) / (10 * normal), 4),
        "trainable_params_m": round(params / 1e6, 1),
        "normal_step_gflops": round(f_normal / 1e9, 2),
        "cft_step_gflops": round(f_cft / 1e9, 2),
        "cft_over_normal_flops": round(f_cft / f_normal, 4),
    }


def bench_inference(
    size: str,
    resolution: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    flop_count: bool = True,
) -> dict:
    from PIL import Image

    from instantportrait.pipelines.fpga import FPGAPipeline, fpga_components

    parts = fpga_components("tiny" if size == "tiny" else "sd15", with_image_encoder=False)
    pipe = FPGAPipeline(**parts).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    width = pipe.controlnet.config.id_dim
    cond = Image.new("RGB", (resolution, resolution))
    runs = {}
    for k in (1, 2, 4):
        ids = torch.randn(k, 4, width).to(device, dtype)
        masks = np.zeros((k, resolution, resolution), np.float32)
        for i in range(k):  # K side-by-side face regions
            w = resolution // k
            masks[i, : resolution // 3, i * w : (i + 1) * w] = 1

        def run(ids=ids, masks=masks, k=k):
            pipe("people in a park", cond, id_embeds=ids, id_masks=masks if k > 1 else None,
                 num_inference_steps=1, guidance_scale=5.0, output_type="latent",
                 generator=torch.Generator().manual_seed(0))  # fmt: skip

        runs[k] = run
    t = interleaved(runs, repeats)
    out: dict = {f"{k}_ids_step_s": round(v, 4) for k, v in t.items()}
    if flop_count:
        counted = {k: flops(fn) for k, fn in runs.items()}
        out.update({f"{k}_ids_step_gflops": round(v / 1e9, 2) for k, v in counted.items()})
        for k in (2, 4):
            out[f"{k}_ids_over_1_flops"] = round(counted[k] / counted[1], 4)
    for k in (2, 4):
        out[f"{k}_ids_over_1"] = round(out[f"{k}_ids_step_s"] / out["1_ids_step_s"], 3)
    return out


def bench_meta_flops(resolution: int = 512) -> dict:
    """FLOPs at real SD1.5 size counted on the meta device (no memory, no weights, no noise).

    Inference: one sampling step (CFG batch of 2) of ID-ControlNet + UNet with 1, 2, 4
    identities. Training: ControlNet + UNet forward and backward (batch 1) on a normal step
    and on a CFT step (ID-attention capture with explicit probabilities, eq. 2 loss).
    """
    from diffusers import UNet2DConditionModel

    from instantportrait.components import SD15_UNET_CONFIG
    from instantportrait.losses.clone_face import clone_face_attention_loss
    from instantportrait.models.id_controlnet import IDControlNetModel
    from instantportrait.multi_id_attention import IDAttentionCapture

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        cn = IDControlNetModel(
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, id_dim=768
        )
    unet.requires_grad_(False)
    h = resolution // 8

    def inputs(b: int, k: int):
        z = torch.randn(b, 4, h, h, device="meta")
        t = torch.full((b,), 500, device="meta")
        text = torch.randn(b, 77, 768, device="meta")
        cond = torch.randn(b, 3, resolution, resolution, device="meta")
        ids = torch.randn(b, k, 4, 768, device="meta") if k > 1 else torch.randn(b, 4, 768)
        masks = torch.ones(1, k, resolution, resolution, device="meta") if k > 1 else None
        return z, t, text, cond, ids.to("meta"), masks

    def step(b: int, k: int, train: bool = False, cft: bool = False):
        z, t, text, cond, ids, masks = inputs(b, k)
        cap = IDAttentionCapture((h, h), min_size=h // 2) if cft else None
        d, m = cn(z, t, text, cond, id_embeds=ids, id_masks=masks, id_capture=cap,
                  return_dict=False)  # fmt: skip
        eps = unet(z, t, text, down_block_additional_residuals=d,
                   mid_block_additional_residual=m).sample  # fmt: skip
        if train:
            loss = (eps - z).pow(2).mean()
            if cft:
                box = torch.tensor([[resolution * 0.1, resolution * 0.2, resolution * 0.35,
                                     resolution * 0.45]])  # fmt: skip
                shift = torch.tensor([resolution / 2, 0, resolution / 2, 0])
                loss = loss + 0.2 * clone_face_attention_loss(cap.maps, box, box + shift, (h, h))
            loss.backward()

    out: dict = {"resolution": resolution}
    per_k = {k: flops(lambda k=k: step(2, k)) for k in (1, 2, 4)}
    for k, f in per_k.items():
        out[f"infer_{k}_ids_tflops"] = round(f / 1e12, 4)
    for k in (2, 4):
        out[f"infer_{k}_ids_over_1"] = round(per_k[k] / per_k[1], 5)
    normal = flops(lambda: step(1, 1, train=True))
    cft = flops(lambda: step(1, 1, train=True, cft=True))
    out.update(
        train_normal_tflops=round(normal / 1e12, 4),
        train_cft_tflops=round(cft / 1e12, 4),
        train_cft_over_normal=round(cft / normal, 5),
    )
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--resolution", type=int, default=None, help="default 64 tiny, 128 real")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--part", choices=["train", "infer", "flops", "all"], default="all")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    res = args.resolution or (64 if args.size == "tiny" else 128)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    result = {
        "size": args.size,
        "resolution": res,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "timing": "minimum over interleaved rounds, after one warm-up round",
    }
    if args.part in ("flops", "all"):
        result["flops_meta"] = bench_meta_flops()
        print(json.dumps(result["flops_meta"]), flush=True)
        if args.part == "flops":
            path = ROOT / "benchmarks" / "results" / "fpga_flops_sd15.json"
            path.write_text(json.dumps(result["flops_meta"], indent=2) + "\n")
            print(f"wrote {path}")
            return 0
    if args.part in ("train", "all"):
        result["training"] = bench_training(args.size, res, args.repeats, device)
        print(json.dumps(result["training"]), flush=True)
    if args.part in ("infer", "all"):
        result["inference"] = bench_inference(args.size, res, args.repeats, device)
        print(json.dumps(result["inference"]), flush=True)
    result["peak_rss_gb"] = round(peak_rss_gb(), 2)
    name = f"fpga_{'cuda' if device.type == 'cuda' else 'cpu'}_{args.size}.json"
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
