"""FaceA-Net generation wiring against expectations computed independently of the pipeline:
the paste region from the detector's own box, the text embeddings captured at the UNets'
inputs against encodings built by hand from the tokenizer, text encoder and the vector file
on disk, the guidance direction on a UNet whose branches we set, and the attribute swap's
training behaviour."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors.torch import load_file

from instantportrait.pipelines.faceanet import FaceANetPipeline

TASK_TEXT = [
    "a woman face",
    "a woman left eye",
    "a woman right eye",
    "a woman nose",
    "a woman mouth",
]


@pytest.fixture(scope="module")
def pipe(tuned):
    p = FaceANetPipeline.from_identity(tuned)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def context(astronaut_path):
    return Image.open(astronaut_path).convert("RGB").resize((256, 256))


def encode(pipe, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """E(text) (77, D) and its token ids, straight from the tokenizer and text encoder."""
    ids = pipe.tokenizer(
        [text], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0][0], ids[0]


def capture_unet(unet) -> tuple[list[torch.Tensor], list[torch.Tensor], object]:
    """Every call's encoder_hidden_states and sample input, via a forward pre-hook."""
    texts, inputs = [], []

    def hook(module, args, kwargs):
        texts.append(kwargs["encoder_hidden_states"].detach().clone())
        inputs.append(args[0].detach().clone())

    return texts, inputs, unet.register_forward_pre_hook(hook, with_kwargs=True)


# ---- the paste region ---------------------------------------------------------------------
def test_paste_region_lies_in_the_detectors_face_box(pipe, context):
    from instantportrait.faces.detect import detect

    det = detect(context, select="largest", landmarks=68)
    x0, y0, x1, y1 = det.boxes[0].tolist()
    w, h = x1 - x0, y1 - y0
    out = pipe("a woman", context_image=context, num_inference_steps=1)
    result, ctx = np.asarray(out.images[0]), np.asarray(context)
    changed = np.any(result != ctx, axis=-1)
    ys, xs = np.mgrid[: ctx.shape[0], : ctx.shape[1]]
    # outer limit: the detector's box grown by half its size (forehead, jaw, 5 % dilation)
    outer = (
        (xs >= x0 - 0.25 * w) & (xs < x1 + 0.25 * w) & (ys >= y0 - 0.5 * h) & (ys < y1 + 0.25 * h)
    )
    assert changed.any() and not changed[~outer].any()  # nothing outside the face changed
    # inner: the middle of the detector's box (eyes, nose, mouth) is repainted
    inner = (
        (xs >= x0 + 0.25 * w) & (xs < x1 - 0.25 * w) & (ys >= y0 + 0.25 * h) & (ys < y1 - 0.25 * h)
    )
    assert changed[inner].mean() > 0.9
    alpha = out.paste_masks[0]
    assert (alpha[inner] > 0.99).mean() > 0.9 and (alpha[~outer] == 0).all()


# ---- the embeddings at the UNets' inputs ----------------------------------------------------
def expected_identity_condition(pipe, tuned, t_id: str):
    """cat_seq[E(T_id), E*(T_face), ..., E*(T_mouth)] built by hand: the task prompts encoded
    and the [feat] vectors read from the identity's file put right after each EOS."""
    vectors = load_file(
        str(tuned / "final" / "feat_embeddings" / "diffusion_pytorch_model.safetensors")
    )["vectors"]
    n = vectors.shape[1]
    segments = [encode(pipe, t_id)[0]]
    for k, text in enumerate(TASK_TEXT):
        emb, ids = encode(pipe, text)
        eos = int((ids == pipe.tokenizer.eos_token_id).nonzero()[0])
        emb = emb.clone()
        emb[eos + 1 : eos + 1 + n] = vectors[k]
        segments.append(emb)
    empty = encode(pipe, "")[0]
    return torch.cat(segments), empty.repeat(6, 1)


def test_the_face_inpainting_sees_t_id_and_the_loaded_feat_vectors(pipe, tuned, context):
    texts, _, handle = capture_unet(pipe.unet)
    try:
        pipe("a woman smiling in a park", context_image=context, num_inference_steps=2)
    finally:
        handle.remove()
    cond, uncond = expected_identity_condition(pipe, tuned, "a woman, smiling")
    assert len(texts) == 2
    for batch in texts:  # classifier-free guidance: [unconditional, conditional]
        assert batch.shape == (2, 6 * 77, cond.shape[-1])
        assert torch.allclose(batch[0], uncond, atol=1e-5)
        assert torch.allclose(batch[1], cond, atol=1e-5)
    # an --id-prompt override reaches the UNet instead of the split
    texts, _, handle = capture_unet(pipe.unet)
    try:
        pipe("a woman", id_prompt="a woman, angry", context_image=context, num_inference_steps=1)
    finally:
        handle.remove()
    assert torch.allclose(texts[0][1, :77], encode(pipe, "a woman, angry")[0], atol=1e-5)


def test_the_context_model_sees_t_context_with_the_noun_and_front_face(pipe):
    from instantportrait.pipelines.faceanet_context import tiny_sdxl_pipeline

    sdxl = tiny_sdxl_pipeline()
    texts, _, handle = capture_unet(sdxl.unet)
    try:
        with pytest.warns(UserWarning, match="no face"):
            pipe(
                "a person smiling in a park",
                context_pipeline=sdxl,
                context_kwargs={"num_inference_steps": 1, "height": 64, "width": 64},
                num_inference_steps=1,
            )
    finally:
        handle.remove()
    with torch.no_grad():
        want, neg, _, _ = sdxl.encode_prompt(
            "a woman in a park, front face", device="cpu", do_classifier_free_guidance=True
        )
    assert len(texts) == 1 and texts[0].shape[0] == 2
    assert torch.allclose(texts[0][1], want[0], atol=1e-5)
    assert torch.allclose(texts[0][0], neg[0], atol=1e-5)


# ---- the guidance direction ----------------------------------------------------------------
class BranchUNet(torch.nn.Module):
    """eps = ``u`` for rows conditioned on the unconditional text, ``c`` otherwise."""

    def __init__(self, uncond: torch.Tensor, u: float, c: float):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.uncond, self.u, self.c = uncond, u, c
        self.config = SimpleNamespace(out_channels=4, in_channels=9)

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def forward(self, x, t, encoder_hidden_states):
        rows = [
            self.u if torch.allclose(e, self.uncond, atol=1e-5) else self.c
            for e in encoder_hidden_states
        ]
        eps = torch.stack([torch.full(x.shape[1:2] + x.shape[2:], r) for r in rows])[:, :4]
        return SimpleNamespace(sample=eps)


class RecordingDDIM(DDIMScheduler):
    def step(self, model_output, *args, **kwargs):
        self.seen.append(model_output.detach().clone())
        return super().step(model_output, *args, **kwargs)


@pytest.mark.parametrize("scale", [1.0, 3.0, 7.5])
def test_guidance_moves_towards_the_conditional_branch(pipe, scale):
    uncond = encode(pipe, "")[0].repeat(6, 1)
    scheduler = RecordingDDIM.from_config(pipe.scheduler.config)
    scheduler.seen = []
    fake = FaceANetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=BranchUNet(uncond, u=0.25, c=1.0),
        scheduler=scheduler,
    )
    fake.set_identity(pipe.feats, pipe.identity)
    fake.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    fake.inpaint(image, mask, "a woman", num_inference_steps=2, guidance_scale=scale)
    # eps_u + s (eps_c - eps_u), with eps_u = 0.25 and eps_c = 1: 0.25 + 0.75 s
    assert len(scheduler.seen) == 2
    for eps in scheduler.seen:
        assert torch.allclose(eps, torch.full_like(eps, 0.25 + 0.75 * scale))


# ---- attribute swap: what it trains ------------------------------------------------------
def test_attribute_swap_trains_the_lora_on_the_donors_nose_only(tuned, other_person, tmp_path):
    from instantportrait.training.config import from_dict
    from instantportrait.training.faceanet import FaceANetConfig, FaceANetTrainer

    cfg = {
        "model": {"init_from": str(tuned)},
        "data": {"images": [str(other_person)], "resolution": 64},
        "tuning": {"tasks": "local", "attribute": "nose"},
        "training": {
            "output_dir": str(tmp_path / "swap"),
            "max_steps": 2,
            "batch_size": 1,
            "tensorboard": False,
            "checkpoint_every": 0,
        },
    }
    trainer = FaceANetTrainer(from_dict(FaceANetConfig, cfg))
    trainer.setup()
    unet = trainer.model.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}
    texts, inputs, handle = capture_unet(unet)
    try:
        from instantportrait.training.loop import step_generator

        for step in range(2):
            batch = trainer.collate([trainer.dataset[(0, 0)]])
            trainer.training_step(batch, step_generator(0, step, 0, trainer.device))
    finally:
        handle.remove()
    # the LoRA keeps learning (it is alice's LoRA, continued)
    changed = [
        n for n, p in unet.named_parameters() if "lora_" in n and not torch.equal(p, before[n])
    ]
    assert changed
    # every UNet call was the local task on the nose: T_nose's words ...
    parts = SimpleNamespace(tokenizer=trainer.tokenizer, text_encoder=trainer.text_encoder)
    nose, ids = encode(parts, "a woman nose")
    eos = int((ids == trainer.tokenizer.eos_token_id).nonzero()[0])
    assert len(texts) == 2
    for batch in texts:
        assert torch.allclose(batch[0, : eos + 1], nose[: eos + 1], atol=1e-5)
    # ... with the donor's nose box as the mask channel: small, inside the crop's middle
    from instantportrait.data.face_crops import part_boxes

    crop = trainer.crops[0]
    x0, y0, x1, y1 = part_boxes(crop.landmarks68, trainer.cfg.data.mask_dilate)["nose"] / 8
    for x in inputs:
        m = x[0, 4]
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        assert m.sum() < 0.2 * m.numel()
        assert xs.min() >= int(x0) and xs.max() <= int(np.ceil(x1))
        assert ys.min() >= int(y0) and ys.max() <= int(np.ceil(y1))
