"""FaceA-Net's attribute-driven feature embeddings (the ``[feat]`` vectors) and prompts.

FaceA-Net (Wang et al., AAAI 2025, §3.2) replaces the embeddings of the first ``n`` padding
tokens after the prompt's end-of-text token by learnable vectors, one set per task: the whole
face and each attribute (left eye, right eye, nose, mouth). ``n`` is 3 for a man and 4 for a
woman. Where the vectors live is not precise in the paper; we follow HiPer (Han et al. 2023):

* ``space="output"`` (default): the prompt is encoded as usual and the encoder's *output* at
  positions ``p0 .. p0+n-1`` (``p0`` = right after end-of-text) is overwritten by the vectors,
  which start as the frozen encoder's output there.
* ``space="input"``: the *token embeddings* at those positions are replaced (textual-inversion
  style) through a forward hook on the encoder's input-embedding layer (a PyTorch extension
  point; nothing of the encoder is patched); they start as the padding token's embedding.

Left and right are the **subject's** own (the face stack's convention,
:mod:`instantportrait.faces.masks`): ``left_eye`` appears on the image's right in an
unmirrored frontal photo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

#: FaceA-Net's tasks in the paper's order: the global face task, then the attributes V.
TASKS: tuple[str, ...] = ("face", "left_eye", "right_eye", "nose", "mouth")
ATTRIBUTES: tuple[str, ...] = TASKS[1:]
GENDERS: tuple[str, ...] = ("man", "woman")
#: ``n`` per gender (paper §3.2: "3 to 4 embeddings"; 3 for male IDs, 4 for female IDs).
DEFAULT_NUM_VECTORS = {"man": 3, "woman": 4}


def task_prompt(gender: str, task: str) -> str:
    """``T_face`` / ``T_v`` of eq. 2: "a woman face", "a man left eye", ..."""
    if gender not in GENDERS:
        raise ValueError(f"gender: one of {', '.join(GENDERS)}, got {gender!r}")
    if task not in TASKS:
        raise ValueError(f"task: one of {', '.join(TASKS)}, got {task!r}")
    return f"a {gender} {task.replace('_', ' ')}"


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids ``(B, L)`` padded to the encoder's length (77 for CLIP)."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def feat_positions(input_ids: torch.Tensor, eos_token_id: int, n: int) -> torch.Tensor:
    """First feat slot ``p0`` per row: the index right after the first end-of-text token.

    Raises ``ValueError`` when the prompt leaves fewer than ``n`` padding slots.
    """
    is_eos = input_ids == eos_token_id
    if not bool(is_eos.any(dim=1).all()):
        raise ValueError("a prompt has no end-of-text token (truncated?)")
    p0 = is_eos.int().argmax(dim=1) + 1
    if bool((p0 + n > input_ids.shape[1]).any()):
        raise ValueError(f"a prompt is too long to leave {n} [feat] slots after its end")
    return p0


class FeatEmbeddings(ModelMixin, ConfigMixin):
    """The learnable ``[feat]`` vectors: ``(len(tasks), num_vectors, dim)``.

    Args:
        tasks: the task names, in order (default :data:`TASKS`).
        num_vectors: ``n`` vectors per task (3 man / 4 woman).
        dim: the vectors' width (768 for CLIP ViT-L/14's output and input spaces).
        space: ``"output"`` (HiPer-like, default) or ``"input"`` (token-embedding space).
    """

    @register_to_config
    def __init__(
        self,
        tasks: tuple[str, ...] = TASKS,
        num_vectors: int = 4,
        dim: int = 768,
        space: str = "output",
    ):
        super().__init__()
        if space not in ("output", "input"):
            raise ValueError(f"space: output or input, got {space!r}")
        if num_vectors < 1:
            raise ValueError(f"num_vectors: at least 1, got {num_vectors}")
        self.vectors = nn.Parameter(torch.zeros(len(tasks), num_vectors, dim))

    def task_index(self, task: str) -> int:
        return list(self.config.tasks).index(task)

    def __getitem__(self, task: str) -> torch.Tensor:
        return self.vectors[self.task_index(task)]

    @torch.no_grad()
    def initialize(self, text_encoder, tokenizer, gender: str) -> FeatEmbeddings:
        """Start each task's vectors from the frozen encoder (output space) or the padding
        token's embedding (input space), at that task's feat slots."""
        prompts = [task_prompt(gender, t) for t in self.config.tasks]
        ids = tokenize(tokenizer, prompts).to(text_encoder.device)
        n = self.config.num_vectors
        p0 = feat_positions(ids, tokenizer.eos_token_id, n)
        if self.config.space == "output":
            source = text_encoder(ids)[0]
        else:
            source = text_encoder.get_input_embeddings()(ids)
        for k in range(len(prompts)):
            start = int(p0[k])
            self.vectors[k].copy_(source[k, start : start + n].to(self.vectors))
        return self


def _substitute(
    hidden: torch.Tensor, p0: torch.Tensor, vectors: torch.Tensor | None
) -> torch.Tensor:
    """``hidden`` (B, L, D) with rows ``p0[b] .. p0[b]+n-1`` replaced by ``vectors[b]``."""
    if vectors is None:
        return hidden
    b, length, _ = hidden.shape
    n = vectors.shape[1]
    pos = torch.arange(length, device=hidden.device).unsqueeze(0)
    rel = pos - p0.to(hidden.device).unsqueeze(1)  # (B, L)
    inside = (rel >= 0) & (rel < n)
    gathered = vectors.to(hidden)[
        torch.arange(b, device=hidden.device).unsqueeze(1), rel.clamp(0, n - 1)
    ]
    return torch.where(inside.unsqueeze(-1), gathered, hidden)


@contextlib.contextmanager
def _input_substitution(
    text_encoder, p0: torch.Tensor, vectors: torch.Tensor | None
) -> Iterator[None]:
    """Replace token embeddings at the feat slots during the block (a forward hook)."""
    if vectors is None:
        yield
        return
    layer = text_encoder.get_input_embeddings()

    def hook(_module, _inputs, output):
        return _substitute(output, p0, vectors)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_with_feats(
    text_encoder,
    input_ids: torch.Tensor,
    feats: FeatEmbeddings | None,
    task_index: torch.Tensor | None,
    eos_token_id: int,
) -> torch.Tensor:
    """``E*(T)``: encoder output ``(B, L, D)`` with each row's task vectors substituted.

    ``task_index`` ``(B,)`` picks each row's task in ``feats``; ``feats=None`` is the plain
    encoding ``E(T)`` (the ablation without embeddings). Gradients flow to ``feats`` only
    (the encoder is frozen by the caller).
    """
    device = text_encoder.device
    ids = input_ids.to(device)
    if feats is None or task_index is None:
        return text_encoder(ids)[0]
    vectors = feats.vectors[task_index.to(feats.vectors.device)]
    p0 = feat_positions(ids, eos_token_id, feats.config.num_vectors)
    if feats.config.space == "input":
        with _input_substitution(text_encoder, p0, vectors):
            return text_encoder(ids)[0]
    return _substitute(text_encoder(ids)[0], p0, vectors)


def identity_conditioning(
    text_encoder,
    tokenizer,
    feats: FeatEmbeddings | None,
    id_prompt: str,
    gender: str,
    *,
    trim_padding: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int, int]]]:
    """``E(T'_id)`` of FaceA-Net §3.3 and its unconditional twin, concatenated on the sequence.

    ``cat_seq[E(T_id), E*(T_face), E*(T_left eye), E*(T_right eye), E*(T_nose), E*(T_mouth)]``
    (6 x 77 tokens); the unconditional branch is ``E("")`` per segment, cut to the same
    lengths. ``trim_padding`` keeps only BOS .. EOS (+ the ``n`` feat slots) of each segment.

    Returns ``(cond (1, L, D), uncond (1, L, D), segments [(name, start, end), ...])``.
    """
    tasks = list(feats.config.tasks) if feats is not None else list(TASKS)
    prompts = [id_prompt] + [task_prompt(gender, t) for t in tasks]
    ids = tokenize(tokenizer, prompts)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        plain = text_encoder(tokenize(tokenizer, [id_prompt, ""]).to(text_encoder.device))[0]
        if feats is not None:
            task_idx = torch.arange(len(tasks))
            starred = encode_with_feats(text_encoder, ids[1:], feats, task_idx, eos)
        else:
            starred = text_encoder(ids[1:].to(text_encoder.device))[0]
    rows = [plain[0], *starred]
    empty = plain[1]
    n = feats.config.num_vectors if feats is not None else 0
    p0 = feat_positions(ids, eos, 0)
    cond, uncond, segments, start = [], [], [], 0
    for k, name in enumerate(["id_prompt", *tasks]):
        length = ids.shape[1]
        if trim_padding:
            length = int(p0[k]) + (n if k > 0 else 0)
        cond.append(rows[k][:length])
        uncond.append(empty[:length])
        segments.append((name, start, start + length))
        start += length
    return torch.cat(cond).unsqueeze(0), torch.cat(uncond).unsqueeze(0), segments
