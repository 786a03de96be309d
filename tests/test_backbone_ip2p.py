"""The InstructPix2Pix UNet behind the edit-backbone interface: the image on the channels
(after the noisy latent, as the UNet was trained), the three-branch guidance by hand, and
x0/eps from an epsilon output by DDPM's formula."""

from __future__ import annotations

import torch

from instantportrait.guidance import instruct_pix2pix_guidance


def _inputs(pipe, batch=2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    img = torch.randn(batch, 4, 8, 8, generator=g)
    cond, uncond = pipe.encode_prompt(["a red hat"] * batch)
    return x, img, cond, uncond


def test_predict_puts_the_image_on_the_channels_after_the_noise(tiny_pipe):
    bb = tiny_pipe.backbone
    assert bb is tiny_pipe.backbone and bb.image_on == "channels"
    x, img, cond, _ = _inputs(tiny_pipe)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        got = bb.predict(x, t, cond, img)
        want = tiny_pipe.unet(torch.cat([x, img], 1), t, encoder_hidden_states=cond).sample
        swapped = tiny_pipe.unet(torch.cat([img, x], 1), t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert float((got - swapped).abs().max()) > 1e-4


def test_guided_predict_is_the_three_branches_combined(tiny_pipe):
    bb = tiny_pipe.backbone
    x, img, cond, uncond = _inputs(tiny_pipe)
    t = torch.tensor([700, 300])  # per-item timesteps must follow each item into its branches
    with torch.no_grad():
        got = bb.predict(x, t, cond, img, guidance=(7.5, 1.5, uncond))

        def unet(image, text):
            return tiny_pipe.unet(torch.cat([x, image], 1), t, encoder_hidden_states=text).sample

        none = unet(torch.zeros_like(img), uncond)
        image_only = unet(img, uncond)
        full = unet(img, cond)
        pipe_path = tiny_pipe.guided_prediction(x, t, img, cond, uncond, 7.5, 1.5)
    want = none + 1.5 * (image_only - none) + 7.5 * (full - image_only)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(pipe_path, got, atol=0, rtol=0)
    assert torch.equal(want, instruct_pix2pix_guidance(full, image_only, none, 7.5, 1.5))


def test_x0_and_eps_from_an_epsilon_output(tiny_pipe):
    bb = tiny_pipe.backbone
    assert bb.parameterisation == "epsilon"
    x0, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    ab = float(tiny_pipe.scheduler.alphas_cumprod[600])
    x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
    torch.testing.assert_close(bb.x0(x_t, 600, eps), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bb.eps(x_t, 600, eps), eps, atol=1e-5, rtol=1e-5)
    assert set(bb.trainable_modules()) == {"unet"}
