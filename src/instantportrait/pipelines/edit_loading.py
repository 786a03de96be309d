"""Loading, saving, moving and speeding up the edit pipeline (a mixin of
:class:`~instantportrait.pipelines.InstantPortraitPipeline`): ``from_pretrained`` with the
safety-checker policy, ``from_single_file`` with a local config, atomic ``save_pretrained``,
``to`` without diffusers' empty float32 notice, ``enable_speed``/``disable_speed``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError
from ..model_sources import loading_error, looks_like_hub_id
from ..writer import atomic_directory
from .edit_support import (
    NOT_LOADED_COMPONENTS,
    SAFETY_CHECKER_POLICY,
    _dropping,
    _empty_fp32_notice,
    _first_parameter,
    _listed_components,
    _Placement,
    _quiet_about,
)

#: how to provide an editor, in every "not found" line.
EDIT_HOW = (
    "pass a local diffusers pipeline folder (`instantportrait init-tiny DIR` makes one) or a "
    "Hub id such as timbrooks/instruct-pix2pix (cached, or on a machine that reaches the Hub)"
)


class EditLoadingMixin:
    """Loading and placement methods; put before ``DiffusionPipeline`` in the bases."""

    def to(self, *args: Any, **kwargs: Any):
        """``DiffusionPipeline.to`` without diffusers' empty "kept in float32: []" notice."""
        with _dropping(["diffusers.models.modeling_utils"], _empty_fp32_notice):
            return super().to(*args, **kwargs)

    # ------------------------------------------------------------------ placement
    def _placement(self) -> _Placement:
        """Execution device and dtypes, resolved once and reused while nothing moved.

        diffusers' ``_execution_device`` and ``ModelMixin.device``/``.dtype`` walk every
        submodule looking for offloading and casting hooks: ~10 ms and ~3 ms per read on a
        real-size UNet, on the host, at every call. The answer is cached under a cheap
        fingerprint of each model (identity, first parameter's device and dtype, top-level
        offload hooks), so moving, casting, offloading or swapping a model resolves it again.
        """
        key = tuple(
            (
                id(module),
                None if (p := _first_parameter(module)) is None else (p.device, p.dtype),
                hasattr(module, "_hf_hook"),
                hasattr(module, "_diffusers_hook"),
            )
            for module in (self.unet, self.vae, self.text_encoder)
        )
        pinned = self.__dict__.get("_pinned_placement")
        if pinned is not None:
            return pinned
        cached = self.__dict__.get("_placement_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        device = self._execution_device
        # A text-encoder-only pipeline (``vae=None, unet=None``, for ``encode_prompt``) computes
        # in its text encoder's dtype.
        unet_dtype = (self.unet or self.text_encoder).dtype
        vae = self.vae
        placement = _Placement(
            device,
            unet_dtype,
            device if vae is None else vae.device,
            unet_dtype if vae is None else vae.dtype,
        )
        self._placement_cache = (key, placement)
        return placement

    # ------------------------------------------------------------------ speed
    def enable_speed(
        self,
        speed: str | Sequence[str] | None = "safe",
        *,
        tiny_vae: str | os.PathLike | None = None,
    ):
        """Turn on a speed preset or features (:mod:`instantportrait.speed`); returns the
        :class:`~instantportrait.speed.SpeedState` (``.describe()``). Call after ``.to()``;
        a second call first undoes the first."""
        from ..speed import enable_speed

        self.disable_speed()
        self._speed_state = enable_speed(self, speed, tiny_vae=tiny_vae)
        return self._speed_state

    def disable_speed(self) -> None:
        """Undo :meth:`enable_speed` (back to the plain pipeline)."""
        state = self.__dict__.pop("_speed_state", None)
        if state is not None:
            state.undo()

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load from a local diffusers folder or a Hub id; one clear line when not found.

        Any InstructPix2Pix-format checkpoint loads (e.g. ``timbrooks/instruct-pix2pix``); its
        layout (a UNet with 8 input channels) is checked from the configs before any weight
        loads. A Hub id is read from the Hugging Face cache when ``HF_HUB_OFFLINE=1``.
        Components it has beyond ours (:data:`NOT_LOADED_COMPONENTS`) are not loaded; a
        listed safety checker is reported once as a warning (:data:`SAFETY_CHECKER_POLICY`).

        diffusers' exception types are kept: what it raises as ``ValueError`` (a missing
        ``variant``) stays a ``ValueError`` (:class:`~..errors.InputError`), an ``OSError``
        stays an ``OSError`` (:class:`~..errors.ModelNotFoundError`); the hint about the
        Hub is added only when the name was looked up on the Hub.
        """
        from ..model_check import check_model
        from ..model_sources import locate

        name = str(pretrained_model_name_or_path)
        path = Path(name).expanduser()
        if path.is_dir() and not (path / "model_index.json").is_file():
            raise ModelNotFoundError(f"{name}: folder has no model_index.json; {EDIT_HOW}")
        if path.is_file():
            raise ModelNotFoundError(
                f"{name}: not a folder (a single .safetensors checkpoint loads with "
                f"from_single_file / load_edit_pipeline); {EDIT_HOW}"
            )
        check_model(name, "edit", "model", how=EDIT_HOW)
        where = locate(name, "model", EDIT_HOW)
        if not isinstance(where, str):
            listed = _listed_components(where)
            if "safety_checker" in listed:
                warnings.warn(SAFETY_CHECKER_POLICY.format(name=name), stacklevel=2)
            for component in NOT_LOADED_COMPONENTS:
                if component in listed:
                    kwargs.setdefault(component, None)
        try:
            with _quiet_about(NOT_LOADED_COMPONENTS):
                return super().from_pretrained(str(where), **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            hub = not path.exists()
            raise loading_error(exc, f"{name}: could not load the pipeline", hub=hub) from exc

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path: str | os.PathLike,
        *,
        use_ema: bool = True,
        **kwargs: Any,
    ):
        """Load one ``.safetensors`` (or ``.ckpt``) checkpoint in the original (LDM) layout.

        Offline (this toolkit's rule: nothing is downloaded behind your back) the pipeline's
        configs must come from ``config=``: a local diffusers folder of the same architecture
        (e.g. a saved InstructPix2Pix pipeline, or ``instantportrait init-tiny`` for the tiny
        one), or a Hub id in the Hugging Face cache; its tokenizer and scheduler are used as
        they are, and the UNet, VAE and text encoder weights are read from the checkpoint.
        On a machine that reaches the Hub, ``config="timbrooks/instruct-pix2pix"`` works too.
        The checkpoint's header and the config are checked (8 input channels) first.

        A checkpoint with an EMA copy of its UNet (``model_ema.*``, as InstructPix2Pix's
        released ``instruct-pix2pix-00-22000.safetensors``) loads that copy, as the official
        code samples with it; ``use_ema=False`` loads the trained (non-EMA) weights
        (diffusers' own name for the choice, ``extract_ema``, is honoured too). Which copy was
        loaded is logged and kept in ``pipe.unet_source``.
        """
        from ..model_check import check_model
        from ..model_sources import locate
        from ..single_file import checkpoint_keys, has_ema_unet

        use_ema = bool(kwargs.pop("extract_ema", use_ema))
        path = Path(str(pretrained_model_link_or_path)).expanduser()
        config = kwargs.get("config")
        how = (
            "pass config=FOLDER, a local diffusers pipeline folder of the same architecture "
            "(CLI: --config FOLDER)"
        )
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: no such checkpoint file")
        if config is None:
            raise ModelNotFoundError(f"{path}: a single-file checkpoint needs its configs; {how}")
        if not Path(str(config)).expanduser().is_dir() and not looks_like_hub_id(str(config)):
            raise ModelNotFoundError(f"{config}: config folder not found; {how}")
        check_model(path, "edit", "model", how=how)
        check_model(config, "edit", "config", how=how)
        where = locate(config, "config", how)
        kwargs["config"] = str(where)
        try:
            two_unets = has_ema_unet(checkpoint_keys(path))
            source = f"the UNet of {path.name}"
            if two_unets and "unet" not in kwargs:
                kwargs["unet"] = _unet_copy(
                    path, kwargs["config"], use_ema, kwargs.get("torch_dtype")
                )
                source = (
                    f"the EMA UNet of {path.name} (it also holds the non-EMA one: use_ema=False, "
                    "CLI --no-ema)"
                    if use_ema
                    else f"the non-EMA UNet of {path.name} (it also holds the EMA one, which "
                    "the official code samples with)"
                )
            pipe = super().from_single_file(str(path), **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            if isinstance(exc, KeyError):
                exc = ValueError(f"missing key {exc}")
            raise loading_error(
                exc, f"{path}: could not load the single-file checkpoint", hub=False
            ) from None
        pipe.unet_source = source
        if two_unets:
            logging.getLogger(__name__).info("loaded %s", source)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save as safetensors into ``save_directory`` atomically (temp folder, then rename)."""
        kwargs.setdefault("safe_serialization", True)
        with atomic_directory(save_directory, overwrite=True) as tmp:
            super().save_pretrained(tmp, **kwargs)


def _unet_copy(path: Path, config: str, use_ema: bool, torch_dtype: Any):
    """The chosen UNet copy of an LDM checkpoint holding two, through diffusers' conversion
    (only that copy's ``model.diffusion_model.*`` keys are handed over)."""
    from diffusers import UNet2DConditionModel

    from ..devices import diffusers_dtype
    from ..single_file import read_checkpoint, unet_checkpoint

    state = unet_checkpoint(read_checkpoint(path), ema=use_ema)
    return UNet2DConditionModel.from_single_file(
        state, config=config, subfolder="unet", **diffusers_dtype(torch_dtype)
    )
