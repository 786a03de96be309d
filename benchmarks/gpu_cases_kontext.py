"""The GPU suite's FLUX.1 Kontext section: the one-step edit at 1024x1024 and one IDE-Net and
one IPNet LoRA training step at 1024x576 on one GPU (issues #28 and #29 ask for these figures
"when a device is lent").

The networks are FLUX.1 Kontext [dev]'s transformer (11.9B parameters) and FLUX's VAE, built
from their published configs with random weights (speed does not depend on weight values):
on the meta device first (shapes only), then given storage on the GPU directly in bf16 with
``to_empty`` and initialised there by each module's own ``reset_parameters`` (seconds on a
GPU; never a 12B initialisation on the CPU, never a float32 copy). The three cases share the
transformer (``ctx.cache``): the edit runs it bare, the IDE-Net step adds the LoRA ``ide``, the
IPNet step the LoRA ``student`` beside it, as the trainers do on one base.

The text encoders are not built: T5-XXL (4.8B) and CLIP-L would only add their memory and one
forward each. The prompt embeddings are given as tensors of the real shapes (512 T5 tokens x
4096, CLIP's pooled 768), and each case's result says so (``text_encoders``).

Under ``--dry-run`` every case runs the same code on the tiny Kontext bundle's configs
(``init-tiny --kind kontext``) at 64-128 px on the CPU, in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # gpu_cases imports this module for its CASES
    from gpu_cases import SuiteContext

#: T5 tokens of the prompt (FLUX.1 Kontext's max_sequence_length) and the distilled guidance
TEXT_TOKENS = 512
GUIDANCE = 2.5
EDIT_SIDE = 1024
TRAIN_SIZE = (1024, 576)  # width, height
LORA_RANK = 64  # KontextModel's default, the shipped rank (tiny: 4, as the tests train)
#: H100 SXM dense bf16 peak, the memory plan's ``--peak-tflops`` for its GPU-hour projection
H100_DENSE_BF16_TFLOPS = 989.0
TEXT_NOTE = (
    "T5-XXL and CLIP-L not run: prompt embeddings given as tensors of the real shapes "
    "(512 T5 tokens x 4096, pooled 768)"
)
GiB = 1024**3


def _dtype(ctx: SuiteContext) -> torch.dtype:
    """bf16 on the GPU (the trainers' and the edit's precision; the meta device stands in for
    it in a test of the real shapes); float32 in a CPU dry run."""
    return torch.float32 if ctx.device.type == "cpu" else torch.bfloat16


def _configs(ctx: SuiteContext) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The transformer's and the VAE's configs and the LoRA rank: real, or the tiny bundle's."""
    from instantportrait.backbones import kontext_components as kc

    if ctx.dry:
        return kc.TINY_TRANSFORMER_CONFIG, kc.TINY_VAE_CONFIG, 4
    return kc.KONTEXT_TRANSFORMER_CONFIG, kc.FLUX_VAE_CONFIG, LORA_RANK


def _train_latent_hw(ctx: SuiteContext) -> tuple[int, int]:
    """The training latents' size: FLUX's 8 px a latent at 1024x576, i.e. (72, 128), rounded
    to whole 2x2 patches (the dry run's sides are not multiples of 16)."""
    w, h = (ctx.side(s) for s in TRAIN_SIZE)
    return 2 * (h // 16), 2 * (w // 16)


def materialise(module: torch.nn.Module, device: torch.device, dtype: torch.dtype):
    """A module built on the meta device, given storage on ``device`` in ``dtype`` and
    initialised there by each submodule's own ``reset_parameters`` (frozen, eval mode)."""
    module = module.to(dtype).to_empty(device=device)
    missing = []
    with torch.no_grad():
        for name, m in module.named_modules():
            if next(m.parameters(recurse=False), None) is None:
                continue
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                missing.append(f"{name} ({type(m).__name__})")
    if missing or next(module.buffers(), None) is not None:
        # to_empty leaves memory uninitialised: a module without its own initialiser or a
        # buffer would compute on garbage (NaNs), so refuse instead of timing them
        raise RuntimeError(f"cannot initialise after to_empty: {missing or 'buffers'}")
    return module.eval().requires_grad_(False)


def _transformer(ctx: SuiteContext):
    """The section's transformer: cached, or built on the meta device and materialised."""
    from diffusers import FluxTransformer2DModel

    t = ctx.cache.get("kontext_transformer")
    if t is None:
        tcfg, _, _ = _configs(ctx)
        if ctx.device.type == "cuda":  # what earlier sections left allocated, if anything
            ctx.cache["kontext_allocated_before"] = torch.cuda.memory_allocated(ctx.device)
        with torch.device("meta"):
            meta = FluxTransformer2DModel(**tcfg)
        t = ctx.cache["kontext_transformer"] = materialise(meta, ctx.device, _dtype(ctx))
    return t


def _condition(transformer, device: torch.device, dtype: torch.dtype):
    """The instruction as the text encoders would hand it over, at the real shapes."""
    from instantportrait.backbones.flux_kontext import KontextCondition

    g = torch.Generator().manual_seed(1)
    c = transformer.config
    embeds = torch.randn(1, TEXT_TOKENS, c.joint_attention_dim, generator=g)
    pooled = torch.randn(1, c.pooled_projection_dim, generator=g)
    ids = torch.zeros(TEXT_TOKENS, 3)  # in the encoders' dtype, as encode_prompt makes them
    return KontextCondition(*(x.to(device, dtype) for x in (embeds, pooled, ids)))


def _peak_bytes(ctx: SuiteContext) -> int | None:
    return torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else None


def _before_gib(ctx: SuiteContext) -> float | None:
    """GiB allocated before the section built its transformer (earlier sections' leftovers,
    which the peaks include and the predictions do not)."""
    return _gib(ctx.cache.get("kontext_allocated_before"))


def _ratio(measured: int | None, predicted: float) -> float | None:
    return None if measured is None else round(measured / predicted, 3)


def _gib(n: float | None) -> float | None:
    return None if n is None else round(n / GiB, 3)


# ====================================================================== the one-step edit


def edit_prediction(
    tcfg: dict[str, Any], vcfg: dict[str, Any], side: int, dtype: torch.dtype
) -> dict[str, float]:
    """bench_kontext's figures for a one-step edit at ``side`` x ``side`` on the meta device:
    the transformer call's FLOPs (its FlopCounterMode count) and the peak memory of the
    transformer and VAE resident in ``dtype`` plus the largest stage's activations (fused
    attention), the way ``bench_kontext.kontext_figures`` adds them up."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    import bench_kontext

    with torch.device("meta"):
        t = FluxTransformer2DModel(**tcfg).to(bench_kontext.BF16)
        vae = AutoencoderKL(**vcfg).to(bench_kontext.BF16)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    # bench_kontext's call puts (h/16)(w/16) tokens of each image on the sequence (FLUX's VAE,
    # 8 px a latent); a VAE of another scale (the tiny one) gets the same token count
    call, _ = bench_kontext.kontext_transformer_call(t, side * 8 // f, side * 8 // f, TEXT_TOKENS)
    call_fig = bench_kontext.measure(call, fused_attention=True)
    encode, decode = bench_kontext.vae_calls(vae, side, side, vae.config.latent_channels)
    act = max(
        call_fig["activation_peak_bytes"],
        bench_kontext.measure(encode, fused_attention=True)["activation_peak_bytes"],
        bench_kontext.measure(decode, fused_attention=True)["activation_peak_bytes"],
    )
    size = torch.finfo(dtype).bits // 8
    params = (bench_kontext.n_params(t) + bench_kontext.n_params(vae)) * size
    return {"transformer_flops": call_fig["flops"], "peak_bytes": params + act}


def kontext_edit_1024(ctx: SuiteContext) -> dict:
    """Case 6a: the one-step Kontext edit at 1024x1024, batch 1, bf16: VAE encode of the edit
    image, the student's one transformer call at sigma = 1 (KontextEditPipeline's own one-step
    path), VAE decode. s per edit, images/s, peak memory against bench_kontext's meta-device
    count, and the transformer call alone in TFLOP/s (bench_kontext's FLOP count)."""
    out = _measure_edit(ctx)
    ctx.free()  # the VAE and the pipeline go; the transformer stays cached for the steps
    return out


def _measure_edit(ctx: SuiteContext) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    import bench_training
    from gpu_cases import _reset_peak
    from instantportrait.backbones.kontext_components import KONTEXT_SCHEDULER_CONFIG
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    tcfg, vcfg, _ = _configs(ctx)
    side, dtype, dev = ctx.side(EDIT_SIDE), _dtype(ctx), ctx.device
    predicted = edit_prediction(tcfg, vcfg, side, dtype)
    transformer = _transformer(ctx)
    with torch.device("meta"):
        vae = AutoencoderKL(**vcfg)
    vae = materialise(vae, dev, dtype)
    pipe = KontextEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**KONTEXT_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
        recommended_steps=1,
    )
    pipe.set_progress_bar_config(disable=True)
    backbone, cond = pipe.backbone, _condition(transformer, dev, dtype)
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(1, 3, side, side, generator=g) * 2 - 1).to(dev)
    latent_shape = (1, vae.config.latent_channels, *(side // backbone.vae_scale_factor,) * 2)
    noise = torch.randn(latent_shape, generator=g).to(dev, dtype)
    image_latents = backbone.encode_image(pixels).to(dtype)

    @torch.no_grad()
    def edit() -> torch.Tensor:
        latents = backbone.encode_image(pixels).to(dtype)
        x0 = pipe._denoise(noise, cond, latents, 1, None)  # the pipeline's one-step path
        return backbone.decode(x0)

    @torch.no_grad()
    def transformer_call() -> torch.Tensor:
        ones = torch.ones(1, device=dev)
        return backbone.predict(noise, ones, cond, image_latents, GUIDANCE)

    edit()  # warm-up (kernels, cuDNN's choices) before the peak is reset
    _reset_peak(dev)
    edit_s = bench_training.timed(edit, 0, ctx.repeats(3))
    peak = _peak_bytes(ctx)
    call_s = bench_training.timed(transformer_call, 1, ctx.repeats(3))
    tflops = predicted["transformer_flops"] / call_s / 1e12
    out = {
        "resolution": [side, side],
        "batch_size": 1,
        "dtype": str(dtype).removeprefix("torch."),
        "text_encoders": TEXT_NOTE,
        "edit_s": round(edit_s, 4),
        "images_per_s": round(1 / edit_s, 3),
        "transformer_call_s": round(call_s, 4),
        "transformer_call_tflop": round(predicted["transformer_flops"] / 1e12, 3),
        "transformer_tflops_per_s": round(tflops, 2),
        "transformer_share_of_edit": round(call_s / edit_s, 3),
        "peak_memory_gib": _gib(peak),
        "predicted_peak_gib_bench_kontext": _gib(predicted["peak_bytes"]),
        "peak_over_predicted": _ratio(peak, predicted["peak_bytes"]),
        "allocated_before_section_gib": _before_gib(ctx),
    }
    print(
        f"  Kontext edit {side}x{side}: {edit_s:.3f} s, transformer {tflops:.0f} TFLOP/s, "
        f"peak {out['peak_memory_gib']} GiB vs {out['predicted_peak_gib_bench_kontext']} GiB "
        f"counted (x{out['peak_over_predicted']})",
        flush=True,
    )
    return out


# ====================================================================== training steps


def kontext_model(ctx: SuiteContext):
    """The section's transformer inside a :class:`KontextModel`, so the steps add, switch and
    train adapters with the trainers' own code (``lora_config``, ``add_adapter``,
    ``set_trainable``, ``adapter``, ``copy_adapter``). Built from components: a 12B pipeline
    folder is not on the device machine (no VAE, no text encoders: see the module's doc)."""
    from instantportrait.training.kontext_model import KontextModel

    km = ctx.cache.get("kontext_model")
    if km is None:
        transformer = _transformer(ctx)
        parts = {"transformer": transformer, "scheduler": None}
        km = KontextModel(parts, ctx.device, _configs(ctx)[2], dtype=_dtype(ctx))
        transformer.enable_gradient_checkpointing()
        ctx.cache["kontext_model"] = km
    return km


def _has_adapter(km, name: str) -> bool:
    return name in getattr(km.transformer, "peft_config", {})


def _plan(ctx: SuiteContext, adapters: int) -> dict[str, int]:
    """kontext_memory_plan's single-device rows for this step (see ``step_prediction``)."""
    import kontext_memory_plan

    meta = ctx.cache.get("kontext_meta_lora")
    if meta is None:
        tcfg, _, rank = _configs(ctx)
        meta = ctx.cache["kontext_meta_lora"] = kontext_memory_plan.meta_transformer(rank, tcfg)
    lh, lw = _train_latent_hw(ctx)
    return kontext_memory_plan.step_prediction(
        meta, (lh // 2) * (lw // 2), TEXT_TOKENS, 1, adapters
    )


def _train_inputs(ctx: SuiteContext, km) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The instruction, the edit image's and the target's latents (random: the VAE encoding
    of a pair happens without gradients and is left out of the step)."""
    g = torch.Generator().manual_seed(2)
    shape = (1, km.transformer.config.in_channels // 4, *_train_latent_hw(ctx))
    image_latents = torch.randn(shape, generator=g).to(ctx.device)
    x0 = torch.randn(shape, generator=g).to(ctx.device)
    return _condition(km.transformer, ctx.device, km.dtype), image_latents, x0


def idenet_step(ctx: SuiteContext, km):
    """One IDE-Net step on the LoRA ``ide`` (added if absent; the only trainable parameters),
    as KontextIDENetTrainer.compute_loss computes its flow-matching term: sigma drawn by
    FLUX's resolution-shifted schedule, ``x_sigma = (1 - sigma) x0 + sigma eps``, the loss
    ``||v_hat - (eps - x0)||^2``; then backward and the trainers' AdamW step. The identity
    term (face window through the VAE decoder and ArcFace) is left out. Returns the step."""
    from instantportrait.backbones.kontext_components import KONTEXT_SCHEDULER_CONFIG
    from instantportrait.parameterization import flow_noise, flow_velocity_target
    from instantportrait.training.kontext_model import flux_training_sigmas

    if not _has_adapter(km, "ide"):
        km.add_adapter("ide", trainable=True)
    km.transformer.set_adapter("ide")
    km.set_trainable("ide")
    km.transformer.train()
    optimizer = torch.optim.AdamW(km.adapter_parameters("ide"), lr=1e-4)
    cond, image_latents, x0 = _train_inputs(ctx, km)
    g = torch.Generator().manual_seed(3)
    tokens = (x0.shape[-2] // 2) * (x0.shape[-1] // 2)

    def step() -> float:
        noise = torch.randn(x0.shape, generator=g).to(ctx.device)
        sigma = flux_training_sigmas(1, tokens, KONTEXT_SCHEDULER_CONFIG, g).to(ctx.device)
        x_sigma = flow_noise(x0, noise, sigma.view(-1, 1, 1, 1))
        v_hat = km.backbone.predict(x_sigma.to(km.dtype), sigma, cond, image_latents, GUIDANCE)
        loss = (v_hat.float() - flow_velocity_target(x0, noise)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def ipnet_step(ctx: SuiteContext, km):
    """One IPNet step of the high stage (Table 6: sigma' in [0.4, 0.8], all above tau, so
    fresh noise and no inversion) on the LoRA ``student`` (initialised from ``ide``; the only
    trainable parameters) with the Kontext IPNet trainer's own rectified-flow methods: the
    student at sigma = 1 (``student_latent``), the teacher's target with ``ide`` active
    (``distillation_target``), the distillation loss in latent space, backward, AdamW. The
    adversarial and triplet terms and the pixel-space decode are left out. Returns the step."""
    from types import SimpleNamespace

    from instantportrait.training.ipnet import STAGES, StageConfig
    from instantportrait.training.kontext_ipnet import KontextIPNetTrainer

    if not _has_adapter(km, "ide"):
        km.add_adapter("ide", trainable=False)
    if not _has_adapter(km, "student"):
        km.add_adapter("student", trainable=True)
        km.copy_adapter("ide", "student")
    km.transformer.set_adapter("student")
    km.set_trainable("student")
    km.transformer.train()

    class Trainer:  # the trainer's methods on this model (its constructor needs an export)
        student_latent = KontextIPNetTrainer.student_latent
        teacher_velocity = KontextIPNetTrainer.teacher_velocity
        distillation_target = KontextIPNetTrainer.distillation_target

    trainer = Trainer()
    trainer.dit_model, trainer.backbone, trainer.device = km, km.backbone, ctx.device
    trainer.guidance = GUIDANCE
    stage = StageConfig(**{**STAGES["low"]["stage"], **STAGES["high"]["stage"]})
    trainer.cfg = SimpleNamespace(stage=stage)
    optimizer = torch.optim.AdamW(km.adapter_parameters("student"), lr=1e-5)
    cond, image_latents, _ = _train_inputs(ctx, km)
    g = torch.Generator().manual_seed(4)

    def step() -> float:
        noise = torch.randn(image_latents.shape, generator=g).to(ctx.device)
        x_hat = trainer.student_latent(noise, image_latents, cond)
        target = trainer.distillation_target(x_hat, image_latents, cond, None, g)
        loss = (x_hat - target["latent"]).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _step_case(
    ctx: SuiteContext, name: str, make_step, adapters: int, calls: float, stage: str
) -> dict:
    """Build the step, warm it up, time it and read its peak; ``calls``: the transformer-call
    equivalents of one step, ``stage``: its row in the memory plan's GPU-hour projection."""
    import bench_training
    import kontext_memory_plan
    from gpu_cases import _reset_peak

    km = kontext_model(ctx)
    step = make_step(ctx, km)
    predicted = _plan(ctx, adapters)
    lh, lw = _train_latent_hw(ctx)
    loss = step()  # warm-up: kernels, and AdamW's states exist from here on
    _reset_peak(ctx.device)
    step_s = bench_training.timed(step, 0, ctx.repeats(2))
    peak = _peak_bytes(ctx)
    total = sum(predicted.values())
    # a checkpointed step: forward 1, recompute 1, backward 2 (+ the IPNet teacher's call)
    meta = ctx.cache["kontext_meta_lora"]
    call_flop = kontext_memory_plan.flops(meta, lh * lw // 4, TEXT_TOKENS)
    flop = calls * call_flop
    util = flop / step_s / (H100_DENSE_BF16_TFLOPS * 1e12)
    # the plan's projection (Table 6's steps x batch) at this measured utilisation
    hours = kontext_memory_plan.gpu_hours(call_flop / 1e12, H100_DENSE_BF16_TFLOPS, util)
    out = {
        "resolution": [lw * 8, lh * 8],
        "batch_size": 1,
        "dtype": str(km.dtype).removeprefix("torch."),
        "lora_rank": km.rank,
        "gradient_checkpointing": True,
        "text_encoders": TEXT_NOTE,
        "first_loss": None if loss.is_meta else round(float(loss), 5),
        "step_s": round(step_s, 4),
        "steps_per_s": round(1 / step_s, 3),
        "transformer_call_equivalents": calls,
        "step_tflop": round(flop / 1e12, 2),
        "utilisation_of_h100_dense_bf16": round(util, 4),
        "projected_gpu_hours": {stage: round(hours[stage]["gpu_hours"], 1)},
        "peak_memory_gib": _gib(peak),
        "predicted_peak_gib_memory_plan": _gib(total),
        "predicted_rows_gib": {k: _gib(v) for k, v in predicted.items()},
        "peak_over_predicted": _ratio(peak, total),
        "allocated_before_section_gib": _before_gib(ctx),
    }
    print(
        f"  {name}: {step_s:.3f} s a step ({util:.0%} of 989 TFLOP/s), peak "
        f"{out['peak_memory_gib']} GiB vs {out['predicted_peak_gib_memory_plan']} GiB planned "
        f"(x{out['peak_over_predicted']})",
        flush=True,
    )
    return out


def kontext_idenet_step_1024x576(ctx: SuiteContext) -> dict:
    """Case 6b: one IDE-Net LoRA step (rank 64, fp32 adapter, bf16 base, gradient
    checkpointing) at 1024x576, batch 1: step s, peak memory against kontext_memory_plan's
    single-device rows for the same setting, and the step's utilisation of the H100's bf16
    peak (the GPU-hour projection in docs/training.md assumes 40%)."""
    out = _step_case(ctx, "Kontext IDE-Net step", idenet_step, 1, 4.0, "idenet")
    ctx.free()
    return out


def kontext_ipnet_step_1024x576(ctx: SuiteContext) -> dict:
    """Case 6c: one IPNet student step (high stage) with both adapters on one base: the
    student's checkpointed forward and backward at sigma = 1, the teacher's call with ``ide``,
    AdamW on ``student``; step s and peak memory against the plan's rows. The last Kontext
    case: the transformer leaves the cache here."""
    try:
        return _step_case(ctx, "Kontext IPNet step", ipnet_step, 2, 5.0, "ipnet high")
    finally:
        for key in [k for k in ctx.cache if k.startswith("kontext_")]:
            ctx.cache.pop(key, None)
        ctx.free()
