"""The ``repcontrolnet`` method kind: a merged RepControlNet under the evaluation harness.

SPEC: ``repcontrolnet:MODEL[,steps=30][,guidance_scale=5][,id_scale=1][,control_strength=B]
[,adapter_scale=1][,width=W][,height=H]`` where ``MODEL`` is a merged RepControlNet folder
(``train repcontrolnet`` or ``init-tiny --kind repcontrolnet``) with its identity encoder.

Everything else is the ``fpga`` kind's protocol (identities, pose condition and face regions
from each item's subject), so the two score side by side on the same items: the paper's
Table 6 (skeleton-guided, RepControlNet vs the ControlNet version of Table 1;
``--paper-table fpga:repcontrolnet``). ``control_strength`` is Eq. 6's beta, re-merged from
the trained copies saved beside the model; it is part of the result key like every setting.
"""

from __future__ import annotations

from typing import Any

from .fpga import FPGAMethod

__all__ = ["RepControlNetMethod"]


class RepControlNetMethod(FPGAMethod):
    """A merged RepControlNet: FPGA's protocol, the base model's cost."""

    options = (*FPGAMethod.options, "control_strength", "adapter_scale")

    model_kind = "repcontrolnet"

    def load_pipeline(self):
        from ...pipelines.fpga_family import load_fpga_family

        strength = self.spec.get("control_strength")
        return load_fpga_family(
            self.spec.path,
            dtype=self.dtype,
            device=self.device,
            control_strength=None if strength is None else float(strength),
            name=f"method {self.spec.text!r}",
        )

    def call_options(self) -> dict[str, Any]:
        return {"adapter_scale": float(self.spec.get("adapter_scale", 1.0))}

    def cost(self) -> dict[str, float | None]:
        from ...components import count_parameters

        pipe = self.pipe
        params = count_parameters(pipe.unet) + count_parameters(pipe.adapter)
        if pipe.id_projections is not None:
            params += count_parameters(pipe.id_projections)
        return {"params": params, "steps": self.steps}
