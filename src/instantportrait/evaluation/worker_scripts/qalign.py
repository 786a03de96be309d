"""Q-Align (Wu et al. 2024; InstantPortrait Table 1) in its own environment.

The model's remote code (mPLUG-Owl2) needs transformers 4.36; ``instantportrait metric-env
create q-align`` builds that environment. ``--weights`` is a local folder of
``q-future/one-align`` (its code is in the folder: nothing is fetched). Requests carry
``task``: ``quality`` or ``aesthetic`` (Q-Align's ``task_="aesthetics"``).
"""

from __future__ import annotations

import sys

from protocol import serve

TASKS = {"quality": "quality", "aesthetic": "aesthetics", "aesthetics": "aesthetics"}


def load(weights: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        weights, trust_remote_code=True, torch_dtype=dtype, local_files_only=True
    )
    return model.to(device).eval()


def score(model, request: dict) -> float:
    import torch
    from PIL import Image

    task = TASKS[request.get("task", "quality")]
    with torch.no_grad():
        out = model.score([Image.open(request["image"]).convert("RGB")], task_=task, input_="image")
    return float(torch.as_tensor(out).flatten()[0])


if __name__ == "__main__":
    sys.exit(serve(load, score))
