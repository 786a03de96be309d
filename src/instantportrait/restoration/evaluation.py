"""The evaluation harness's ``restore`` step: any method's outputs, then DIIR (paper Table 2).

SPEC: ``restore:DIIR_MODEL,method=KIND,model=PATH[,restore_below=100][,restore_steps=30]
[,restore_guidance=5][,<the inner method's settings>...]``, e.g.::

    instantportrait evaluate ... --method ipnet=edit:runs/ipnet/final,steps=1 \
        --method ipnet+diir=restore:models/diir,method=edit,model=runs/ipnet/final,steps=1

so "method" and "method + DIIR" are scored side by side. Every face of the output smaller
than ``restore_below`` pixels is restored with the identity of the input portrait (the id the
generation should have) and pasted back.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from ..errors import InputError
from ..evaluation.methods import Method, MethodSpec, build_method

OWN = ("method", "model", "restore_below", "restore_steps", "restore_guidance")


class RestoredMethod(Method):
    """Wraps another method; DIIR-restores the small faces of each of its outputs."""

    kind = "restore"
    options = OWN

    def __init__(
        self, spec: MethodSpec, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> None:
        own = {k: v for k, v in spec.options.items() if k in OWN}
        inner = {k: v for k, v in spec.options.items() if k not in OWN}
        super().__init__(MethodSpec(spec.kind, spec.path, own, spec.text), device, dtype)
        self.spec = spec
        if not spec.path:
            raise InputError(f"method {spec.text!r}: restore needs the DIIR model as restore:PATH")
        if not own.get("method"):
            raise InputError(f"method {spec.text!r}: give the method to restore, method=KIND")
        model = own.get("model")
        self.inner = build_method(
            MethodSpec(str(own["method"]), None if model is None else str(model), inner, spec.text),
            device=device,
            dtype=dtype,
        )
        self._restorer = None

    @property
    def restorer(self):
        if self._restorer is None:
            from .restorer import FaceRestorer

            self._restorer = FaceRestorer.from_pretrained(
                self.spec.path,
                restore_below=float(self.spec.get("restore_below", 100)),
                num_inference_steps=int(self.spec.get("restore_steps", 30)),
                guidance_scale=float(self.spec.get("restore_guidance", 5.0)),
            )
            self._restorer.pipeline.to(device=self.device, dtype=self.dtype)
        return self._restorer

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        out = self.inner.generate(image, prompt, seed, **context)
        return self.restorer.restore(out, image, name=str(context.get("face", "output"))).image

    def cost(self) -> dict[str, float | None]:
        inner = self.inner.cost()
        steps = inner.get("steps")
        diir = 3 * int(self.spec.get("restore_steps", 30))  # inversion + CFG regeneration
        return {"params": inner.get("params"), "steps": None if steps is None else steps + diir}

    def close(self) -> None:
        self.inner.close()
        self._restorer = None
