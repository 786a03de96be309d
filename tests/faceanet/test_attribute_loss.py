"""Eq. 2: the named function by hand, the trainer's loss against an independent computation,
and the local task's attribute drawn once per step, uniformly (chi-square over seeded steps)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from instantportrait.losses.attribute import attribute_reconstruction_loss
from instantportrait.training.loop import step_generator


def test_eq2_by_hand():
    z = torch.zeros(2, 4, 2, 2)
    out = attribute_reconstruction_loss(z + 1.0, z, z + 2.0, z)
    # full-latent means: 1^2 = 1 (face) and 2^2 = 4 (attribute), summed 1:1
    assert out["l_face"].item() == 1.0 and out["l_attr"].item() == 4.0
    assert out["loss"].item() == 5.0
    # mask-weighted: the error only counts where the mask is 1 (a quarter of the cells)
    err = z.clone()
    err[:, :, 0, 0] = 3.0
    m = torch.zeros(2, 1, 2, 2)
    m[:, :, 0, 0] = 1.0
    w = attribute_reconstruction_loss(err, z, z, z, mask_face=m, mask_attr=m)
    assert w["l_face"].item() == 9.0 and w["l_attr"].item() == 0.0
    assert attribute_reconstruction_loss(err, z, z, z)["l_face"].item() == 9.0 / 4


def test_trainer_loss_matches_an_independent_computation(trainer_factory, tmp_path):
    tr = trainer_factory(tmp_path / "r")
    tr.setup()
    batch = tr.collate([tr.dataset[(0, i)] for i in range(2)])
    terms = tr.compute_loss(batch, step_generator(3, 5, 0, tr.device))
    # again, by hand: the same draws in the same order, the UNet input built with F.interpolate
    g = step_generator(3, 5, 0, tr.device)
    vae, unet = tr.vae, tr.model.unet
    sf = vae.config.scaling_factor
    x, masks = batch["image"], batch["masks"]
    ab_all = tr.train_scheduler.alphas_cumprod
    total = []
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist.sample(generator=g) * sf
        v = int(torch.randint(0, 4, (1,), generator=g)) + 1
        for task in (0, v):
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, 1000, (2,), generator=g)
            ab = ab_all[t].view(-1, 1, 1, 1)
            z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
            m = masks[:, task]
            lat_m = vae.encode(x * (1 - m)).latent_dist.mode() * sf
            small = F.interpolate(m, size=z0.shape[-2:], mode="nearest")
            names = ["face", "left eye", "right eye", "nose", "mouth"]
            ids = tr.tokenizer(
                [f"a woman {names[task]}"] * 2,
                padding="max_length",
                max_length=77,
                return_tensors="pt",
            ).input_ids
            text = tr.text_encoder(ids)[0].clone()
            eos = int((ids[0] == tr.tokenizer.eos_token_id).nonzero()[0])
            n = tr.model.feats.config.num_vectors
            text[:, eos + 1 : eos + 1 + n] = tr.model.feats.vectors[task]
            eps = unet(torch.cat([z_t, small, lat_m], 1), t, encoder_hidden_states=text).sample
            total.append(np.mean((eps.numpy().astype(np.float64) - noise.numpy()) ** 2))
    assert int(terms["attribute"].item()) == v
    np.testing.assert_allclose(terms["l_face"].item(), total[0], rtol=1e-5)
    np.testing.assert_allclose(terms["l_attr"].item(), total[1], rtol=1e-5)
    np.testing.assert_allclose(terms["loss"].item(), total[0] + total[1], rtol=1e-5)


def test_one_attribute_per_step_drawn_uniformly(trainer_factory, tmp_path):
    tr = trainer_factory(tmp_path / "r")
    steps = 4000
    counts = np.zeros(5, dtype=np.int64)
    for s in range(steps):
        v = tr.draw_attributes(4, step_generator(0, s, 0, tr.device))
        assert len(set(v.tolist())) == 1, "one attribute task per step for the whole batch"
        counts[int(v[0])] += 1
    assert counts[0] == 0  # the face is the global task, never the local one
    expected = steps / 4
    chi2 = float(((counts[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 16.27, (counts, chi2)  # chi-square, 3 d.o.f., p = 0.001
    # per-sample sampling draws independently, still never the face
    tr2 = trainer_factory(tmp_path / "r2", tuning={"attribute_sampling": "sample"})
    draws = torch.cat(
        [tr2.draw_attributes(4, step_generator(1, s, 0, tr2.device)) for s in range(50)]
    )
    assert draws.min() >= 1 and draws.max() <= 4 and len(set(draws.tolist())) == 4


def test_each_step_runs_exactly_one_face_and_one_attribute_task(trainer_factory, tmp_path):
    tr = trainer_factory(tmp_path / "r")
    tr.setup()
    calls = []
    original = tr.task_term

    def spy(images, z0, mask, task_index, generator):
        calls.append(task_index.tolist())
        return original(images, z0, mask, task_index, generator)

    tr.task_term = spy
    batch = tr.collate([tr.dataset[(0, i)] for i in range(2)])
    tr.compute_loss(batch, step_generator(0, 0, 0, tr.device))
    assert len(calls) == 2 and calls[0] == [0, 0] and calls[1][0] in (1, 2, 3, 4)
    assert calls[1][0] == calls[1][1]
