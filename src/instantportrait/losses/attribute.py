"""FaceA-Net's attribute-driven reconstruction loss (Wang et al., AAAI 2025, eq. 2)."""

from __future__ import annotations

import torch


def _squared_error(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean of ``(prediction - target)^2`` over the batch, or over ``mask`` when given."""
    err = (prediction.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    m = mask.float().expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def attribute_term(
    eps_hat: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One expectation of eq. 2 (FaceA-Net, Wang et al., AAAI 2025): ``E||eps - eps_hat||^2``
    over the full latent, or over ``mask`` (the mask-weighted variant). L_A is the sum of the
    global and the local term; a trainer may back-propagate each on its own (same gradient)."""
    return _squared_error(eps_hat, eps, mask)


def attribute_reconstruction_loss(
    eps_hat_face: torch.Tensor,
    eps_face: torch.Tensor,
    eps_hat_attr: torch.Tensor,
    eps_attr: torch.Tensor,
    *,
    mask_face: torch.Tensor | None = None,
    mask_attr: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L_A of FaceA-Net (Wang et al., AAAI 2025, eq. 2): global face term + local attribute term.

    ``L_A = E||eps - eps_theta(z_t, t, s, T_face, m_face)||^2
          + E||eps - eps_theta(z_t, t, s, T_v, m_v)||^2``, the two terms weighted 1:1.

    Args:
        eps_hat_face / eps_face: the UNet's prediction and the drawn noise of the global task
            (the whole face masked, prompt ``T_face``), ``(B, 4, h, w)``.
        eps_hat_attr / eps_attr: the same for the local task (one attribute ``v`` masked,
            prompt ``T_v``); its own ``t`` and noise.
        mask_face / mask_attr: when given, each term is the mean over its mask only (the
            optional mask-weighted variant; the paper's literal loss is the full-latent mean).

    Returns:
        ``{"loss": L_A, "l_face": global term, "l_attr": local term}``.
    """
    l_face = attribute_term(eps_hat_face, eps_face, mask_face)
    l_attr = attribute_term(eps_hat_attr, eps_attr, mask_attr)
    return {"loss": l_face + l_attr, "l_face": l_face, "l_attr": l_attr}
