"""CodeFormer at the released size (random weights): our network against the official one, and
its cost per face after DIIR.

Measures, in one run:
- with ``--official PATH`` (a checkout of github.com/sczhou/CodeFormer): the official
  ``CodeFormer`` is built from that checkout's ``basicsr/archs`` files (read from there, not
  copied; its ``basicsr.utils`` logger/registry are replaced by two stubs so neither OpenCV
  nor the rest of basicsr is needed), given random weights (codebook and position embedding
  re-drawn so the code predictions vary), and its ``state_dict`` loaded into ours with
  ``strict=True``; then both restore the same random face at w = 0, 0.5, 1 with AdaIN (the
  official inference's settings): max |difference| of the outputs and logits, and the share of
  identical code indices;
- our network's time per face for batches of 1 and 4 at 512² (median of ``--repeats``), with
  w = 0 (no fusion) and w = 0.5.
Writes ``benchmarks/results/codeformer_<device>.json``. Needs about 2 GiB of memory: run under
``flock /tmp/realsize.lock``.

    python benchmarks/bench_codeformer.py [--official PATH] [--repeats 3] [--device cpu]
        [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instantportrait.models.codeformer import CodeFormer  # noqa: E402


def official_class(checkout: Path) -> type:
    """The official ``CodeFormer`` class, imported from ``checkout`` with two stubs."""
    utils = types.ModuleType("basicsr.utils")
    utils.get_root_logger = lambda *a, **k: __import__("logging").getLogger("basicsr")
    registry = types.ModuleType("basicsr.utils.registry")
    registry.ARCH_REGISTRY = types.SimpleNamespace(register=lambda *a, **k: lambda c: c)
    for name in ("basicsr", "basicsr.archs"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["basicsr.utils"], sys.modules["basicsr.utils.registry"] = utils, registry
    for name in ("vqgan_arch", "codeformer_arch"):
        path = checkout / "basicsr" / "archs" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"basicsr.archs.{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["basicsr.archs.codeformer_arch"].CodeFormer


def compare(checkout: Path, device: torch.device) -> dict:
    torch.manual_seed(0)
    official = official_class(checkout)(
        dim_embd=512, codebook_size=1024, n_head=8, n_layers=9,
        connect_list=["32", "64", "128", "256"],
    ).eval()  # fmt: skip
    with torch.no_grad():
        official.position_emb.normal_(0, 0.5)
        official.quantize.embedding.weight.normal_(0, 1)
    ours = CodeFormer().eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    official.to(device)
    ours.to(device)
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    rows = {}
    with torch.no_grad():
        for w in (0.0, 0.5, 1.0):
            out_o, logits_o, _ = official(x, w=w, adain=True)
            res = ours(x, fidelity=w, adain=True)
            rows[str(w)] = {
                "max_abs_diff_output": (out_o - res.sample).abs().max().item(),
                "output_abs_max": out_o.abs().max().item(),
                "max_abs_diff_logits": (logits_o - res.logits).abs().max().item(),
                "same_code_share": (logits_o.argmax(-1) == res.logits.argmax(-1))
                .float()
                .mean()
                .item(),
            }
            print(f"w={w}: {rows[str(w)]}")
    return rows


def latency(device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    model = CodeFormer().eval().to(device)
    out = {"params": sum(p.numel() for p in model.parameters())}
    for batch in (1, 4):
        x = torch.rand(batch, 3, 512, 512, device=device) * 2 - 1
        for w in (0.0, 0.5):
            times = []
            with torch.no_grad():
                model(x[:1], fidelity=w)  # warm-up
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    model(x, fidelity=w)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
            per_face = statistics.median(times) / batch
            out[f"batch{batch}_w{w}_s_per_face"] = per_face
            print(f"batch {batch}, w={w}: {per_face:.2f} s per face")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=None, help="sczhou/CodeFormer checkout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "note": "random weights at the released configuration (94.1 M parameters); 512² input",
    }
    if args.official is not None:
        result["official_vs_ours"] = compare(args.official, device)
    result["latency"] = latency(device, args.repeats)
    dest = ROOT / "benchmarks" / "results" / f"codeformer_{device.type}.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(dest)


if __name__ == "__main__":
    main()
