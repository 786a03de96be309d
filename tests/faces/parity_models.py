"""Random-weight networks in the reference models' formats, exported to ONNX: a synthetic SCRFD
(insightface's 6- or 9-output layout) and a small ArcFace-shaped recogniser (optionally with
mxnet-style built-in input normalisation). Used by ``test_parity.py`` and
``benchmarks/face_reference_paths.py``; exporting needs the ``onnx`` package (extra
``reference``)."""

from __future__ import annotations

import torch
from torch import nn


class SyntheticScrfd(nn.Module):
    """Random weights, SCRFD's outputs: per stride 8/16/32 and 2 anchors per position,
    scores ``(N, 1)``, distances ``(N, 4)`` and (with keypoints) offsets ``(N, 10)``."""

    def __init__(self, keypoints: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.keypoints = keypoints
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(8, 8, s, stride=s) for s in (8, 16, 32))
        self.score = nn.ModuleList(nn.Conv2d(8, 2, 1) for _ in range(3))
        self.box = nn.ModuleList(nn.Conv2d(8, 8, 1) for _ in range(3))
        self.kps = nn.ModuleList(nn.Conv2d(8, 20, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = torch.relu(self.stem(x))
        scores, boxes, kps = [], [], []
        for i in range(3):
            g = torch.relu(self.down[i](f))

            def flat(t: torch.Tensor, c: int) -> torch.Tensor:
                return t.permute(0, 2, 3, 1).reshape(-1, c)

            z = self.score[i](g)
            z = (z - z.mean()) / z.std()  # standardised: a few percent of the anchors pass 0.5
            scores.append(flat(torch.sigmoid(3 * z - 4.5), 1))
            boxes.append(flat(torch.relu(self.box[i](g)) + 1.0, 4))
            kps.append(flat(self.kps[i](g), 10))
        return tuple(scores + boxes + (kps if self.keypoints else []))


def export(model: nn.Module, path, shape, dynamic_batch: bool = False) -> None:
    model.eval()
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input.1": {0: "batch"}}
    torch.onnx.export(
        model, (torch.zeros(shape),), str(path), input_names=["input.1"], dynamo=False, **kwargs
    )


class TinyRecogniser(nn.Module):
    """A small random ArcFace-shaped network: 112x112 RGB to 64-D."""

    def __init__(self, builtin_normalisation: bool = False) -> None:
        super().__init__()
        from instantportrait.faces.arcface import IResNet

        torch.manual_seed(1)
        self.builtin = builtin_normalisation
        self.net = IResNet((1, 1, 1, 1), num_features=64, widths=(8, 8, 16, 16)).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.builtin:  # as mxnet conversions: the graph takes raw [0, 255] pixels
            x = (x - 127.5) * 0.0078125
        return self.net(x)


def as_mxnet_conversion(path) -> None:
    """Make the graph look like an mxnet conversion: its input normalisation (``Sub`` then
    ``Mul``, which read only the input and constants) first, named ``_minus0`` and ``_mul0``."""
    import onnx

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    sub = next(n for n in nodes if n.op_type == "Sub")
    mul = next(n for n in nodes if n.op_type == "Mul")
    sub.name, mul.name = "_minus0", "_mul0"
    rest = [n for n in nodes if n is not sub and n is not mul]
    head = [n for n in rest if n.op_type == "Constant" and n.output[0] in (*sub.input, *mul.input)]
    order = head + [sub, mul] + [n for n in rest if n not in head]
    del model.graph.node[:]
    model.graph.node.extend(order)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
