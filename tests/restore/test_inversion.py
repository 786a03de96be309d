"""DDIM inversion against closed forms: on the deterministic DDIM path of one clean latent
x0 and one noise eps0 every level is ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps0`` and the ideal
prediction is eps0 everywhere; the inversion must land exactly on those levels and sampling
must walk back to the start."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from instantportrait.components import SD15_SCHEDULER_CONFIG
from instantportrait.restoration.attention import SelfAttentionStore
from instantportrait.restoration.inversion import ddim_inversion, ddim_step


def _scheduler(steps: int) -> DDIMScheduler:
    s = DDIMScheduler(
        **SD15_SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    s.set_timesteps(steps)
    return s


def test_ddim_step_by_hand():
    z, eps = torch.tensor([2.0]), torch.tensor([1.0])
    a_from, a_to = torch.tensor(0.25), torch.tensor(0.64)
    # x0 = (2 - sqrt(0.75)) / 0.5 ; z' = 0.8 x0 + 0.6 * 1
    x0 = (2 - 0.75**0.5) / 0.5
    assert torch.allclose(ddim_step(z, eps, a_from, a_to), torch.tensor([0.8 * x0 + 0.6]))


def test_inversion_with_ideal_denoiser_is_exact():
    torch.manual_seed(0)
    sched = _scheduler(10)
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    # the first move starts from final_alpha_cumprod (the 'clean' level of this scheduler)
    a_final = torch.tensor(float(sched.final_alpha_cumprod), dtype=torch.float64)
    eps0 = torch.randn_like(x0)
    z_start = a_final.sqrt() * x0 + (1 - a_final).sqrt() * eps0
    acp = sched.alphas_cumprod.double()

    def ideal(z, t):
        return eps0

    calls = []

    def spy(z, t):
        calls.append(int(t[0]))
        return ideal(z, t)

    cache = ddim_inversion(spy, z_start, sched, SelfAttentionStore())
    assert calls == sorted(int(t) for t in sched.timesteps)  # ascending, one call per step
    for t in sched.timesteps.tolist():
        want = acp[t].sqrt() * x0 + (1 - acp[t]).sqrt() * eps0
        assert torch.allclose(cache.latents[t], want, atol=1e-9)
    # and sampling back down with the same levels returns the start
    z = cache.noisiest
    ts = cache.timesteps
    for i, t in enumerate(ts):
        prev = acp[ts[i + 1]] if i + 1 < len(ts) else a_final
        z = ddim_step(z, ideal(z, torch.tensor([t])), acp[t], prev)
        assert torch.allclose(z, cache.previous(i), atol=1e-8)
    assert torch.allclose(z, z_start, atol=1e-8)
