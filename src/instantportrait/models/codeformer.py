"""CodeFormer (Zhou et al., "Towards Robust Blind Face Restoration with Codebook Lookup
Transformer", NeurIPS 2022): the face enhancer the FPGA paper runs after DIIR (its Table 4).

The network, in three parts that share one VQGAN:

1. the VQGAN **encoder** maps a 512² face in [-1, 1] to a 16×16 grid of 256-d features
   ``Z_l``, keeping its intermediate features ``F_e`` at some resolutions;
2. a **transformer** (9 pre-norm self-attention layers, learned position embedding) reads the
   grid as 256 tokens and predicts, per token, the index of a code in the learned 1024-entry
   **codebook** (§3.2); the looked-up codes (re-normalised to the statistics of ``Z_l`` by
   AdaIN, as the official inference does) replace the low-quality features;
3. the VQGAN **generator** (decoder) turns the codes into a face, and at the resolutions of
   ``connect_resolutions`` a **controllable feature transformation** (CFT, §3.3) fuses the
   encoder's features into the decoder's, weighted by the fidelity ``w``:
   ``F_d <- F_d + (alpha * F_d + beta) * w`` with ``alpha, beta`` predicted from both. ``w = 0``
   is pure codebook output (highest quality), ``w = 1`` follows the input most (fidelity).

:class:`CodeFormer` is written for this project from reading the official
``basicsr/archs/codeformer_arch.py`` and ``vqgan_arch.py``; its parameter names and shapes at
the default configuration are the official checkpoint's (``codeformer.pth``, key
``params_ema``), so the released file loads with ``strict=True`` through
:func:`load_codeformer`. The layout of a foreign checkpoint fixes the module names, so the
attention layers are plain modules (``nn.MultiheadAttention`` in the transformer, 1×1
convolutions in the VQGAN) rather than diffusers' ``Attention``. A smaller configuration (the
tiny test model) is the same class with narrower widths, fewer levels, a smaller codebook and
fewer layers. The VQGAN's blocks live in :mod:`.vqgan`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import InputError, ModelNotFoundError
from .vqgan import ResBlock, VectorQuantizer, VQEncoder, VQGenerator

__all__ = [
    "CodeFormer",
    "CodeFormerOutput",
    "TINY_CODEFORMER_CONFIG",
    "adaptive_instance_normalization",
    "config_from_state_dict",
    "controllable_feature_transform",
    "load_codeformer",
    "write_tiny_codeformer",
]

WEIGHTS_HINT = (
    "download codeformer.pth from https://github.com/sczhou/CodeFormer/releases "
    "(v0.1.0) and give its path"
)


# ---------------------------------------------------------------------------- equations
def controllable_feature_transform(
    dec_feat: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, w: float
) -> torch.Tensor:
    """CodeFormer's CFT (Zhou et al. 2022, §3.3, Eq. 7): ``F_d + (alpha ⊙ F_d + beta) × w``.

    ``alpha`` (scale) and ``beta`` (shift) are predicted from the encoder and decoder features;
    ``w`` in [0, 1] is the fidelity weight: 0 leaves the decoder features unchanged.
    """
    return dec_feat + (alpha * dec_feat + beta) * w


def adaptive_instance_normalization(
    content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """AdaIN (Huang & Belongie 2017): ``content`` re-normalised to the per-channel spatial mean
    and standard deviation of ``style``, both ``(B, C, H, W)``.

    As in CodeFormer's inference, the standard deviation is ``sqrt(unbiased variance + eps)``.
    """

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    c_mean, c_std = stats(content)
    s_mean, s_std = stats(style)
    return (content - c_mean) / c_std * s_std + s_mean


# ---------------------------------------------------------------------------- transformer
class TransformerSALayer(nn.Module):
    """Pre-norm self-attention + GELU MLP; the position embedding is added to queries and keys
    only (§3.2)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h + pos, h + pos, h, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class FuseSFTBlock(nn.Module):
    """The CFT module at one resolution: ``alpha`` (``scale``) and ``beta`` (``shift``) from the
    concatenated encoder and decoder features."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels, groups)

        def head() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.LeakyReLU(0.2, True),
                nn.Conv2d(channels, channels, 3, padding=1),
            )

        self.scale, self.shift = head(), head()

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: float) -> torch.Tensor:
        joint = self.encode_enc(torch.cat([enc_feat, dec_feat], dim=1))
        return controllable_feature_transform(dec_feat, self.scale(joint), self.shift(joint), w)


@dataclass
class CodeFormerOutput(BaseOutput):
    """``sample``: the restored face in [-1, 1] (not clamped); ``logits`` ``(B, h*w, K)``: the
    code predictions; ``lq_feat``: the encoder's low-quality latent ``Z_l``."""

    sample: torch.Tensor
    logits: torch.Tensor
    lq_feat: torch.Tensor


class CodeFormer(ModelMixin, ConfigMixin):
    """CodeFormer's network; the defaults are the released model's (``codeformer.pth``).

    Args:
        image_size: input/output side in pixels (512).
        base_channels / channel_multipliers: VQGAN widths per level (64; 1, 2, 2, 4, 4, 8);
            the latent grid is ``image_size / 2**(levels - 1)`` (16) on a side.
        num_res_blocks: residual blocks per level (2).
        attention_resolutions: levels with spatial attention (16).
        codebook_size / codebook_dim: codes and their width (1024, 256).
        transformer_dim / num_heads / num_layers / mlp_ratio: the code-prediction transformer
            (512, 8, 9, 2).
        connect_resolutions: where the CFT fuses encoder features (32, 64, 128, 256).
        norm_groups: GroupNorm groups (32).
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 512,
        base_channels: int = 64,
        channel_multipliers: tuple[int, ...] = (1, 2, 2, 4, 4, 8),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        codebook_size: int = 1024,
        codebook_dim: int = 256,
        transformer_dim: int = 512,
        num_heads: int = 8,
        num_layers: int = 9,
        mlp_ratio: int = 2,
        connect_resolutions: tuple[int, ...] = (32, 64, 128, 256),
        norm_groups: int = 32,
    ):
        super().__init__()
        levels = len(channel_multipliers)
        latent = image_size // 2 ** (levels - 1)
        if latent * 2 ** (levels - 1) != image_size:
            raise ValueError(f"image_size {image_size} is not divisible by 2**{levels - 1}")
        widths = {image_size // 2**i: base_channels * m for i, m in enumerate(channel_multipliers)}
        if bad := [r for r in connect_resolutions if r not in widths]:
            raise ValueError(f"connect_resolutions {bad}: not a level resolution {sorted(widths)}")
        cfg = dict(
            image_size=image_size,
            base_channels=base_channels,
            channel_multipliers=tuple(channel_multipliers),
            num_res_blocks=num_res_blocks,
            attention_resolutions=tuple(attention_resolutions),
            codebook_dim=codebook_dim,
            norm_groups=norm_groups,
        )
        self.encoder = VQEncoder(cfg)
        self.quantize = VectorQuantizer(codebook_size, codebook_dim)
        self.generator = VQGenerator(cfg)
        self.position_emb = nn.Parameter(torch.zeros(latent * latent, transformer_dim))
        self.feat_emb = nn.Linear(codebook_dim, transformer_dim)
        self.ft_layers = nn.ModuleList(
            TransformerSALayer(transformer_dim, num_heads, transformer_dim * mlp_ratio)
            for _ in range(num_layers)
        )
        self.idx_pred_layer = nn.Sequential(
            nn.LayerNorm(transformer_dim), nn.Linear(transformer_dim, codebook_size, bias=False)
        )
        self.fuse_convs_dict = nn.ModuleDict(
            {str(r): FuseSFTBlock(widths[r], norm_groups) for r in connect_resolutions}
        )
        self.latent_side = latent

    def predict_codes(self, lq_feat: torch.Tensor) -> torch.Tensor:
        """The transformer's code logits ``(B, h*w, codebook_size)`` for ``Z_l``."""
        tokens = self.feat_emb(lq_feat.flatten(2).transpose(1, 2))
        pos = self.position_emb[None].to(tokens.dtype)
        for layer in self.ft_layers:
            tokens = layer(tokens, pos)
        return self.idx_pred_layer(tokens)

    def forward(
        self,
        sample: torch.Tensor,
        fidelity: float = 0.5,
        adain: bool = True,
        return_dict: bool = True,
    ) -> CodeFormerOutput | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Restore faces ``sample`` ``(B, 3, S, S)`` in [-1, 1], ``S = image_size``.

        Args:
            fidelity: the CFT weight ``w`` in [0, 1]; 0 skips the fusion (as the official code).
            adain: re-normalise the looked-up codes to ``Z_l``'s statistics (official inference).
        """
        size = self.config.image_size
        if sample.ndim != 4 or sample.shape[1] != 3 or tuple(sample.shape[-2:]) != (size, size):
            raise ValueError(
                f"CodeFormer: expected (B, 3, {size}, {size}), got {tuple(sample.shape)}"
            )
        enc_taps = {i: r for r, i in self.encoder.taps.items() if str(r) in self.fuse_convs_dict}
        skips: dict[int, torch.Tensor] = {}
        x = sample
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in enc_taps:
                skips[enc_taps[i]] = x
        lq_feat = x
        logits = self.predict_codes(lq_feat)
        side = (self.latent_side, self.latent_side)
        x = self.quantize.lookup(logits.argmax(-1), side).to(lq_feat.dtype)
        if adain:
            x = adaptive_instance_normalization(x, lq_feat)
        dec_taps = {i: r for r, i in self.generator.taps.items() if r in skips}
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if i in dec_taps and fidelity > 0:
                r = dec_taps[i]
                x = self.fuse_convs_dict[str(r)](skips[r], x, fidelity)
        if not return_dict:
            return x, logits, lq_feat
        return CodeFormerOutput(sample=x, logits=logits, lq_feat=lq_feat)


# ---------------------------------------------------------------------------- loading
def _block_kinds(state: dict[str, torch.Tensor], prefix: str) -> list[tuple[str, int]]:
    """``(kind, output width)`` of each block ``prefix.N`` from its parameter names."""
    names: dict[int, set[str]] = {}
    for key in state:
        if m := re.match(rf"{re.escape(prefix)}\.(\d+)\.(.+)$", key):
            names.setdefault(int(m[1]), set()).add(m[2])
    kinds = []
    for i in range(len(names)):
        n = names.get(i, set())
        if "conv1.weight" in n:
            kinds.append(("res", state[f"{prefix}.{i}.conv1.weight"].shape[0]))
        elif "q.weight" in n:
            kinds.append(("attn", 0))
        elif "conv.weight" in n:
            kinds.append(("resample", 0))
        else:
            kinds.append(("layer", state[f"{prefix}.{i}.weight"].shape[0]))
    return kinds


def config_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The :class:`CodeFormer` configuration a state dict was saved from, read from its key
        names and shapes. Two settings leave no trace in the tensors and keep their defaults (the
    released model's): ``num_heads`` (8) and ``norm_groups`` (32)."""
    try:
        tokens, dim = state["position_emb"].shape
        codebook_size, codebook_dim = state["quantize.embedding.weight"].shape
        kinds = _block_kinds(state, "encoder.blocks")
        nf = kinds[0][1]
        levels: list[list[tuple[str, int]]] = [[]]
        for kind in kinds[1:-5]:  # after the stem, before the middle blocks and the head
            if kind[0] == "resample":
                levels.append([])
            else:
                levels[-1].append(kind)
        num_res = sum(k == "res" for k, _ in levels[0])
        side = math.isqrt(tokens)
        image_size = side * 2 ** (len(levels) - 1)
        num_layers = len({k.split(".")[1] for k in state if k.startswith("ft_layers.")})
        mlp_dim = state["ft_layers.0.linear1.weight"].shape[0]
        connect = sorted({int(k.split(".")[1]) for k in state if k.startswith("fuse_convs_dict.")})
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise InputError(f"not a CodeFormer state dict (could not read {exc})") from None
    return dict(
        image_size=image_size,
        base_channels=nf,
        channel_multipliers=tuple(level[0][1] // nf for level in levels),
        num_res_blocks=num_res,
        attention_resolutions=tuple(
            image_size // 2**i for i, lv in enumerate(levels) if any(k == "attn" for k, _ in lv)
        ),
        codebook_size=codebook_size,
        codebook_dim=codebook_dim,
        transformer_dim=dim,
        num_layers=num_layers,
        mlp_ratio=mlp_dim // dim,
        connect_resolutions=tuple(connect),
    )


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official-format ``.pth``: ``params_ema``, else ``params``, else the
    file itself; read with ``torch.load(weights_only=True)`` (tensors only, no code runs)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(
            f"CodeFormer weights: {path}: not a readable checkpoint ({type(exc).__name__}: {first})"
        ) from None
    if isinstance(ckpt, dict):
        for key in ("params_ema", "params"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not ckpt:
        raise InputError(f"CodeFormer weights: {path}: no state dict (params_ema/params) inside")
    if bad := [k for k, v in ckpt.items() if not isinstance(v, torch.Tensor)][:3]:
        raise InputError(f"CodeFormer weights: {path}: entries that are not tensors: {bad}")
    return ckpt


def _check_layout(model: CodeFormer, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise one :class:`InputError` line naming missing, unexpected or mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise InputError(
            f"CodeFormer weights: {where}: not CodeFormer's layout; " + "; ".join(problems)
        )


def load_codeformer(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> CodeFormer:
    """Load CodeFormer from the official ``codeformer.pth`` or a ``save_pretrained`` folder.

    Args:
        path: a ``.pth`` file (``params_ema``, else ``params``, else a bare state dict; its
            configuration is read from the tensors' names and shapes) or a folder with
            ``config.json`` and safetensors weights.
        device / dtype: where the model goes (default: CPU, float32).

    Raises:
        ModelNotFoundError: nothing at ``path`` (the message says where to get the weights).
        InputError: the file is unreadable or not CodeFormer's layout (the keys named).
    """
    p = Path(path).expanduser()
    if not p.exists():
        from ..model_sources import missing_model

        raise missing_model("CodeFormer weights", p, WEIGHTS_HINT)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"CodeFormer weights: {p}: a folder without config.json (give codeformer.pth "
                "or a folder written by save_pretrained)"
            )
        try:
            model = CodeFormer.from_pretrained(p)
        except Exception as exc:  # noqa: BLE001 - diffusers' errors become one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"CodeFormer weights: {p}: cannot load ({first})") from None
    else:
        state = _read_checkpoint(p)
        config = config_from_state_dict(state)
        with torch.device("meta"):
            model = CodeFormer(**config)
        _check_layout(model, state, str(p))
        model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    return model.to(device=device or "cpu", dtype=dtype or torch.float32)


#: The tiny random model of ``init-tiny --kind codeformer``: 32 px, three levels, 64 codes.
TINY_CODEFORMER_CONFIG: dict[str, Any] = dict(
    image_size=32,
    base_channels=32,
    channel_multipliers=(1, 1, 2),
    num_res_blocks=2,
    attention_resolutions=(8,),
    codebook_size=64,
    codebook_dim=16,
    transformer_dim=32,
    num_heads=8,
    num_layers=2,
    mlp_ratio=2,
    connect_resolutions=(16, 32),
    norm_groups=32,
)


def write_tiny_codeformer(directory: Path, *, seed: int = 0) -> None:
    """A tiny random :class:`CodeFormer` (:data:`TINY_CODEFORMER_CONFIG`) saved with
    ``save_pretrained`` into ``directory``; :func:`load_codeformer` reads it."""
    torch.manual_seed(seed)
    model = CodeFormer(**TINY_CODEFORMER_CONFIG)
    with torch.no_grad():  # the released init leaves it zero; random makes it matter
        model.position_emb.normal_(0.0, 0.5)
    model.save_pretrained(directory)
