"""Inputs of the edit pipeline (a mixin of
:class:`~instantportrait.pipelines.InstantPortraitPipeline`): argument checks, batching of
prompts and images, text embeddings with per-pipeline caches of host work."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..io import MAX_RESOLUTION, ResolutionPolicy, check_prompt
from .edit_support import _split_images

PromptInput = Any


class EditInputsMixin:
    """Argument checks and text encoding of the edit pipeline."""

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        prompt: PromptInput | None,
        image: Any,
        num_inference_steps: int,
        iterations: int,
        output_type: str,
        prompt_embeds: torch.Tensor | None,
    ) -> None:
        """Raise :class:`InputError` with one line for any invalid argument."""
        if prompt is None and prompt_embeds is None:
            raise InputError("prompt: give `prompt` or `prompt_embeds`")
        if image is None:
            raise InputError("image: an input image is required")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise InputError(
                f"num_inference_steps: must be a positive integer, got {num_inference_steps}"
            )
        if not isinstance(iterations, int) or iterations < 1:
            raise InputError(f"iterations: must be a positive integer, got {iterations}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InputError(f"output_type: one of pil, np, pt, latent; got {output_type!r}")

    def _as_batch(
        self, prompt: PromptInput | None, image: Any, n_embeds: int | None
    ) -> tuple[list[str] | None, list[Any]]:
        images = _split_images(image)
        prompts = None
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            # Each distinct prompt is checked (tokenized for its length) once per pipeline:
            # a video or a batch job repeats it at every call.
            checked = self._host_cache("checked_prompts")
            for i, p in enumerate(prompts):
                if not (isinstance(p, str) and p in checked):
                    checked_p = check_prompt(p, self.tokenizer, name=f"prompt[{i}]")
                    if isinstance(p, str):
                        checked[p] = checked_p
                    prompts[i] = checked_p
                else:
                    prompts[i] = checked[p]
        n = max(len(images), len(prompts) if prompts else n_embeds or 1)
        if len(images) == 1 and n > 1:
            images = images * n
        if prompts is not None and len(prompts) == 1 and n > 1:
            prompts = prompts * n
        if len(images) != n or (prompts is not None and len(prompts) != n):
            raise InputError(
                f"batch: {len(images)} images and {len(prompts or [])} prompts; give equal "
                "numbers, or one of either"
            )
        return prompts, images

    def encode_prompt(
        self,
        prompt: PromptInput,
        device: torch.device | None = None,
        negative_prompt: PromptInput | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings ``(cond, uncond)``, each ``(B, 77, D)``; encode once, reuse often."""
        device = device or self._placement().device
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = (
                [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            )
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
        embeds = self._text_embeddings(prompts + negatives, device)
        return embeds[: len(prompts)], embeds[len(prompts) :]

    def _text_embeddings(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """Embeddings of ``texts``; each distinct text runs through the encoder once."""
        from ..text import encode_prompts

        return encode_prompts(
            self.tokenizer,
            self.text_encoder,
            texts,
            device,
            self._placement().unet_dtype,
            tokenize=self._token_ids,
        )

    def _host_cache(self, name: str) -> dict[str, Any]:
        """A small per-pipeline cache of host work (prompt checks, token ids), emptied when
        the tokenizer changes or it grows past 512 entries."""
        caches = self.__dict__.setdefault("_host_caches", {})
        if caches.get("_tokenizer") is not self.tokenizer:
            caches.clear()
            caches["_tokenizer"] = self.tokenizer
        cache = caches.setdefault(name, {})
        if len(cache) > 512:
            cache.clear()
        return cache

    def _token_ids(self, texts: list[str]) -> torch.Tensor:
        """``(len(texts), model_max_length)`` token ids, padded and truncated; each text is
        tokenized once per pipeline (tokenizing costs ~0.4 ms of host time a call)."""
        cache = self._host_cache("token_ids")
        missing = [t for t in texts if t not in cache]
        if missing:
            from ..text import token_ids

            ids = token_ids(self.tokenizer, missing)
            for text, row in zip(missing, ids):
                cache[text] = row[None]
        if len(texts) == 1:
            return cache[texts[0]]
        return torch.cat([cache[t] for t in texts])

    def maybe_free_model_hooks(self) -> None:
        """diffusers' end-of-call hook work, without building ``self.components`` (an
        ``inspect.signature`` walk, ~0.1 ms) when no offloading hook is installed."""
        modules = (self.unet, self.vae, self.text_encoder, getattr(self, "_latent_decoder", None))
        for module in modules:
            if hasattr(module, "_reset_stateful_cache"):
                module._reset_stateful_cache()
        if getattr(self, "_all_hooks", None):
            super().maybe_free_model_hooks()

    def _target_size(
        self, policy: ResolutionPolicy, size: tuple[int, int], height: int | None, width: int | None
    ) -> tuple[int, int]:
        """(width, height) the model sees: ``height``/``width`` if given (one given: the other
        follows the aspect ratio), else the resolution policy's."""
        if height is None and width is None:
            return policy.target_size(*size)
        w0, h0 = size
        if width is None:
            width = max(8, int(round(w0 * height / h0 / 8)) * 8)
        if height is None:
            height = max(8, int(round(h0 * width / w0 / 8)) * 8)
        return width, height

    @staticmethod
    def _check_size_arguments(height: int | None, width: int | None, resolution: int | None):
        for name, value in (("height", height), ("width", width)):
            if value is None:
                continue
            if not isinstance(value, int) or value < 8 or value % 8:
                raise InputError(f"{name}: a multiple of 8, at least 8; got {value}")
            if value > MAX_RESOLUTION:
                raise InputError(
                    f"{name}: {value} is above the limit of {MAX_RESOLUTION} "
                    "(INSTANTPORTRAIT_MAX_RESOLUTION raises it)"
                )
        ResolutionPolicy(long_side=resolution)  # validates resolution
