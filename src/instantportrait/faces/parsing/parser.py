"""The face mask M_B from a BiSeNet face parse (FPGA spec §4, DIIR), and the parser's loader.

:class:`FaceParser` is the restorer's ``mask_fn``: ``(crop, landmarks) -> (H, W)`` mask in
``[0, 1]`` at the crop's size, the union of the chosen CelebAMask-HQ classes of the crop's
parse. The parse follows the official inference of face-parsing.PyTorch (``test.py``): the
image resized to 512x512 (PIL bilinear), ``ToTensor`` and ImageNet mean/std normalisation,
the main head's logits, argmax over the 19 classes. The mask's border is *not* smoothed here:
:meth:`FaceRestorer.face_mask <..restoration.restorer.FaceRestorer.face_mask>` blurs every
mask it gets by a Gaussian of 2% of the crop side (spec §4, σ = 2%).

When the parse holds no pixel of the chosen classes (no face found by the parser) the
landmark face mask (:func:`~..masks.face_mask`) is used instead and a note says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InputError, ModelNotFoundError
from ..weights import load_into, read_state_dict
from .bisenet import BiSeNet, config_from_state_dict

__all__ = [
    "CELEBAMASK_CLASSES",
    "FACE_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FaceParser",
    "class_mask",
    "load_bisenet",
    "load_face_parser",
    "preprocess",
    "write_tiny_face_parser",
]

#: The 19 labels of CelebAMask-HQ as numbered by face-parsing.PyTorch (``prepropess_data.py``).
CELEBAMASK_CLASSES = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)

#: M_B's classes, spec §4 [rec]: 1-13 (skin, brows, eyes, glasses, ears, earring, nose, mouth,
#: lips); not neck (14), necklace (15), cloth (16), hair (17), hat (18).
FACE_CLASSES = tuple(range(1, 14))

#: torchvision's ImageNet normalisation, used by the official inference.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: What to give as face-parser weights, for "not found" messages.
WEIGHTS_HINT = (
    "BiSeNet face-parsing weights: face-parsing.PyTorch's 79999_iter.pth, facexlib's "
    "parsing_bisenet.pth, or a folder written by BiSeNet.save_pretrained"
)


def preprocess(images: Sequence[Image.Image], size: int = 512) -> torch.Tensor:
    """The official inference's input: RGB resized to ``size``² (PIL bilinear), ImageNet-normalised.

    Returns ``(B, 3, size, size)`` float32.
    """
    arrays = [
        np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        for img in images
    ]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def class_mask(logits: torch.Tensor, classes: Iterable[int]) -> torch.Tensor:
    """``(B, H, W)`` float mask: 1 where the argmax class of ``logits`` ``(B, C, H, W)`` is in
    ``classes``, else 0."""
    wanted = torch.as_tensor(sorted(set(int(c) for c in classes)), device=logits.device)
    return torch.isin(logits.argmax(dim=1), wanted).float()


def _check_classes(classes: Iterable[int], num_classes: int) -> tuple[int, ...]:
    out = tuple(sorted(set(int(c) for c in classes)))
    if not out:
        raise InputError("face-parser classes: give at least one class")
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise InputError(f"face-parser classes: {bad} outside 0..{num_classes - 1}")
    return out


class FaceParser:
    """M_B from a BiSeNet parse: a ``mask_fn`` for :class:`~..restoration.restorer.FaceRestorer`.

    Args:
        model: a :class:`BiSeNet` (eval mode; runs on its own device and dtype).
        classes: the CelebAMask-HQ classes that make the mask (default
            :data:`FACE_CLASSES`, 1-13).
        fallback: when the parse holds none of ``classes``, use the landmark face mask (and
            note it); ``False``: return the empty mask.
    """

    def __init__(
        self, model: BiSeNet, classes: Iterable[int] = FACE_CLASSES, *, fallback: bool = True
    ) -> None:
        self.model = model.eval()
        self.classes = _check_classes(classes, int(model.config.num_classes))
        self.fallback = fallback
        self.notes: list[str] = []
        self._last: tuple[Image.Image, torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The main head's logits ``(B, num_classes, S, S)`` at the parser's ``sample_size``."""
        x = preprocess(images, int(self.model.config.sample_size))
        return self.model(x.to(self.device, self.dtype)).float()

    def parse(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Label maps ``(B, S, S)`` (int64): the argmax class of every pixel."""
        return self.logits(images).argmax(dim=1).cpu()

    def take_notes(self) -> list[str]:
        """The notes since the last call (e.g. landmark fallbacks), then forget them."""
        notes, self.notes = self.notes, []
        return notes

    def __call__(self, crop: Image.Image, landmarks: np.ndarray) -> torch.Tensor:
        """The ``(H, W)`` mask of ``crop`` (values in ``[0, 1]``, border not smoothed).

        ``landmarks`` (68 points in crop pixels) serve only the fallback. The parse of the last
        crop is kept, so the restorer's two calls per face (at the DIIR resolution and at the
        crop's own size) run the network once.
        """
        if self._last is not None and self._last[0] is crop:
            mask = self._last[1]
        else:
            mask = class_mask(self.logits([crop]), self.classes)[0].cpu()
            self._last = (crop, mask)
        h, w = crop.height, crop.width
        if mask.sum() == 0 and self.fallback:
            from ..masks import face_mask

            if not self.notes or "landmark" not in self.notes[-1]:
                self.notes.append(
                    "the face parser found no face class in a crop; used the landmark face mask"
                )
            return face_mask(np.asarray(landmarks), (h, w))[0, 0]
        if mask.shape != (h, w):
            mask = F.interpolate(
                mask[None, None], size=(h, w), mode="bilinear", antialias=True, align_corners=False
            )[0, 0].clamp(0, 1)
        return mask


def load_bisenet(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> BiSeNet:
    """A :class:`BiSeNet` from a ``.pth``/``.pt``/``.safetensors`` state dict or a
    ``save_pretrained`` folder, loaded strictly (every key and shape checked).

    ``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle holding code is
    refused. Any failure is one line (:class:`ModelNotFoundError` for a missing path,
    :class:`InputError` naming the first missing, unexpected or mis-shaped key).
    """
    p = Path(path).expanduser()
    if not p.exists():
        from ...model_sources import missing_model

        raise missing_model("face parser", p, f"give {WEIGHTS_HINT}")
    if p.is_dir():
        if not (p / BiSeNet.config_name).is_file():
            raise ModelNotFoundError(
                f"{p}: not a face-parser folder (no {BiSeNet.config_name}); give {WEIGHTS_HINT}"
            )
        try:
            config = BiSeNet.load_config(p)
        except Exception as exc:  # noqa: BLE001 - any config failure is bad input
            raise InputError(f"{p}: unreadable face-parser config ({exc})") from None
        if config.get("_class_name") != BiSeNet.__name__:
            raise InputError(f"{p}: not a BiSeNet folder (_class_name {config.get('_class_name')})")
        files = sorted(p.glob("*.safetensors"))
        if len(files) != 1:
            raise ModelNotFoundError(
                f"{p}: expected one .safetensors weight file in the face-parser folder, "
                f"found {len(files)}"
            )
        model = BiSeNet.from_config(config)
        state = read_state_dict(files[0], "face-parser")
        source = str(files[0])
    else:
        state = read_state_dict(p, "face-parser")
        config = config_from_state_dict(state, str(p))
        model = BiSeNet(**config)
        source = str(p)
    load_into(model, state, source, "BiSeNet face-parsing")
    if device is not None:
        model.to(device=device)
    if dtype is not None and dtype != model.dtype:  # (diffusers warns on any dtype= in .to)
        model.to(dtype=dtype)
    return model.eval()


def load_face_parser(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    classes: Iterable[int] = FACE_CLASSES,
    fallback: bool = True,
) -> FaceParser:
    """The :class:`FaceParser` of the BiSeNet weights at ``path`` (see :func:`load_bisenet`)."""
    return FaceParser(load_bisenet(path, device, dtype), classes, fallback=fallback)


def write_tiny_face_parser(directory: Path, *, seed: int = 0) -> None:
    """A random BiSeNet with widths 8-64 and a 64-px input, as ``save_pretrained`` writes it."""
    torch.manual_seed(seed)
    model = BiSeNet(
        block_out_channels=(8, 16, 32, 64),
        context_channels=16,
        fusion_channels=32,
        head_channels=16,
        aux_head_channels=8,
        sample_size=64,
    )
    model.save_pretrained(directory)
