"""The evaluation harness's ``restore`` step: any method's outputs, then DIIR (paper Table 2).

SPEC: ``restore:DIIR_MODEL,method=KIND,model=PATH[,restore_below=100][,restore_steps=30]
[,restore_guidance=5][,face_parser=PATH][,codeformer=PATH[,codeformer_fidelity=0.5]]
[,<the inner method's settings>...]``, e.g.::

    instantportrait evaluate ... --method ipnet=edit:runs/ipnet/final,steps=1 \
        --method ipnet+diir=restore:models/diir,method=edit,model=runs/ipnet/final,steps=1

so "method" and "method + DIIR" are scored side by side; with ``codeformer=PATH`` (the
official ``codeformer.pth`` or a ``save_pretrained`` folder) CodeFormer enhances the restored
crops before the paste-back, so "DIIR" and "DIIR + CodeFormer" score side by side (the
paper's Table 4). Every face of the output smaller
than ``restore_below`` pixels is restored with the identity the generation should have (the
item's identity photo; for several identities with face regions, each face takes the identity
whose region covers most of it, and a face in no region is left untouched) and pasted back.

The wrapper passes the harness's state through to the inner method (its ``cache_dir`` for
per-identity caches such as FaceA-Net's tuned identities, the run's ``prompts``), and its key
holds the inner method's whole fingerprint and the DIIR model's identity (and CodeFormer's
weights and fidelity when given), so a changed inner model recomputes the "+ DIIR" rows too.
``face_parser=PATH`` takes the face mask M_B from a BiSeNet parse (:mod:`..faces.parsing`);
its weights' identity is part of the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import InputError, ModelNotFoundError
from ..evaluation.methods import (
    Method,
    MethodSpec,
    build_method,
    check_model_path,
    model_fingerprint,
)

OWN = (
    "method",
    "model",
    "restore_below",
    "restore_steps",
    "restore_guidance",
    "face_parser",  # BiSeNet weights for the face mask M_B (default: landmark mask)
    "codeformer",  # CodeFormer after DIIR (paper Table 4)
    "codeformer_fidelity",
)


class RestoredMethod(Method):
    """Wraps another method; DIIR-restores the small faces of each of its outputs."""

    kind = "restore"
    options = OWN

    # the harness sets these on the wrapper; the inner method needs them too
    @property
    def cache_dir(self):  # type: ignore[override]
        return self._cache_dir

    @cache_dir.setter
    def cache_dir(self, value) -> None:
        self._cache_dir = value
        if getattr(self, "inner", None) is not None:
            self.inner.cache_dir = value

    @property
    def prompts(self):  # type: ignore[override]
        return self._prompts

    @prompts.setter
    def prompts(self, value) -> None:
        self._prompts = value
        if getattr(self, "inner", None) is not None:
            self.inner.prompts = value

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
        self.inner.cache_dir, self.inner.prompts = self.cache_dir, self.prompts
        self._restorer = None

    def check(self) -> None:
        check_model_path(
            str(self.spec.path), f"method {self.spec.text!r}: DIIR model", use="restore"
        )
        self.inner.check()
        parser = self.spec.options.get("face_parser")
        if parser and not Path(str(parser)).expanduser().exists():
            raise ModelNotFoundError(
                f"method {self.spec.text!r}: face_parser: {parser}: no such file or folder"
            )
        from .codeformer import check_fidelity

        check_fidelity(
            self.spec.get("codeformer_fidelity", 0.5), self._label("codeformer_fidelity")
        )
        if self.spec.get("codeformer") and not Path(str(self.spec.get("codeformer"))).exists():
            raise ModelNotFoundError(
                f"{self._label('codeformer')}: {self.spec.get('codeformer')}: no such file or "
                "folder (the official codeformer.pth or a save_pretrained folder)"
            )

    def _label(self, option: str) -> str:
        return f"method {self.spec.text!r}: {option}"

    def fingerprint_data(self) -> dict[str, Any]:
        own = {k: self.spec.options[k] for k in sorted(self.spec.options) if k in OWN}
        data = {
            "kind": "restore",
            "options": own,
            "diir": model_fingerprint(self.spec.path),
            "dtype": str(self.dtype).replace("torch.", ""),
            "inner": self.inner.fingerprint_data(),
            **self._codeformer_fingerprint(),
        }
        if self.spec.options.get("face_parser"):  # (absent: keys of earlier runs unchanged)
            data["face_parser"] = model_fingerprint(self.spec.options["face_parser"])
        return data

    def _codeformer_fingerprint(self) -> dict[str, Any]:
        """CodeFormer's weights and fidelity, only when it is used (old keys stay valid)."""
        path = self.spec.get("codeformer")
        if not path:
            return {}
        w = float(self.spec.get("codeformer_fidelity", 0.5))
        return {"codeformer": {**model_fingerprint(str(path)), "fidelity": w}}

    def settings(self) -> dict[str, Any]:
        return dict(self.spec.options)

    @property
    def restorer(self):
        if self._restorer is None:
            from .restorer import FaceRestorer

            self._restorer = FaceRestorer.from_pretrained(
                self.spec.path,
                restore_below=float(self.spec.get("restore_below", 100)),
                num_inference_steps=int(self.spec.get("restore_steps", 30)),
                guidance_scale=float(self.spec.get("restore_guidance", 5.0)),
                mask_fn=self._face_parser(),
                enhancer=self._codeformer(),
            )
            self._restorer.pipeline.to(device=self.device, dtype=self.dtype)
        return self._restorer

    def _face_parser(self):
        """The ``face_parser=PATH`` setting's :class:`~..faces.parsing.FaceParser`, else None."""
        path = self.spec.options.get("face_parser")
        if not path:
            return None
        from ..faces.parsing import load_face_parser

        return load_face_parser(str(path), self.device, self.dtype)

    def _codeformer(self):
        """The CodeFormer enhancer of ``codeformer=PATH``, or ``None``."""
        path = self.spec.get("codeformer")
        if not path:
            return None
        from .codeformer import check_fidelity, load_codeformer_enhancer

        w = check_fidelity(
            self.spec.get("codeformer_fidelity", 0.5), self._label("codeformer_fidelity")
        )
        return load_codeformer_enhancer(str(path), w, device=self.device, dtype=self.dtype)

    def identities(self, output: Image.Image, image: Image.Image, subject: Any) -> dict[str, Any]:
        """Whom each restored face should look like, as :meth:`FaceRestorer.restore` keyword
        arguments: the one identity's photo; for several identities with regions, each
        identity's photo and its region, so that every face takes the identity whose region
        covers most of it and a face in no region is left untouched; else nothing (each face
        keeps its own identity)."""
        import numpy as np

        from ..io import load_image

        if subject is None:
            return {"id_images": image}
        ids = subject.identities
        if len(ids) == 1:
            return {"id_images": load_image(ids[0].photos[0], name=str(ids[0].photos[0]))}
        if not all(i.region is not None for i in ids):
            return {}  # no placement known: every face restores its own identity
        from ..conditions import box_mask

        regions = np.stack([box_mask(tuple(i.region), output.size) for i in ids])
        photos = [load_image(i.photos[0], name=str(i.photos[0])) for i in ids]
        return {"id_images": photos, "regions": regions}

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        out = self.inner.generate(image, prompt, seed, **context)
        who = self.identities(out, image, context.get("subject"))
        name = str(context.get("face", "output"))
        return self.restorer.restore(out, name=name, **who).image

    def cost(self) -> dict[str, float | None]:
        inner = self.inner.cost()
        steps = inner.get("steps")
        diir = 3 * int(self.spec.get("restore_steps", 30))  # inversion + CFG regeneration
        diir += 1 if self.spec.get("codeformer") else 0  # one CodeFormer pass
        return {"params": inner.get("params"), "steps": None if steps is None else steps + diir}

    def close(self) -> None:
        self.inner.close()
        self._restorer = None
