"""CUDA-graph replay of a module at fixed input signatures (the ``cuda-graphs`` speed feature).

Capturing one forward per input signature and replaying it removes the kernel-launch overhead
that dominates a one-step UNet at small batch; :mod:`instantportrait.speed` swaps the
pipeline's modules for :class:`CUDAGraphModule` when the feature is on.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CUDAGraphModule"]


class CUDAGraphModule(torch.nn.Module):
    """Runs ``module`` by replaying a CUDA graph captured per input signature.

    The first call with new shapes, dtypes or non-tensor arguments warms the module up on a
    side stream and captures one forward; later calls copy their tensors into the captured
    static inputs, replay, and return a copy of the static output. For inference at fixed
    shapes on CUDA (the launch overhead of a one-step UNet then vanishes). Attributes the
    wrapper lacks (``config``, ``dtype``...) are read from the wrapped module.
    """

    def __init__(self, module: torch.nn.Module, warmup: int = 3):
        super().__init__()
        self.module = module
        self.warmup = warmup
        self._graphs: dict[Any, tuple[Any, ...]] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    @staticmethod
    def _key(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device.type)
        if isinstance(value, (list, tuple)):
            return tuple(CUDAGraphModule._key(v) for v in value)
        return ("value", repr(value))

    @staticmethod
    def _static(value: Any, device: torch.device) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().to(device).clone()
        return value

    @staticmethod
    def _copy(static: Any, value: Any) -> None:
        if isinstance(static, torch.Tensor):
            static.copy_(value)

    @staticmethod
    def _clone(out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return out.clone()
        if isinstance(out, (list, tuple)):
            return type(out)(CUDAGraphModule._clone(o) for o in out)
        return out

    def _capture(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        device = next(self.module.parameters()).device
        s_args = tuple(self._static(a, device) for a in args)
        s_kwargs = {k: self._static(v, device) for k, v in kwargs.items()}
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.module(*s_args, **s_kwargs)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            s_out = self.module(*s_args, **s_kwargs)
        return s_args, s_kwargs, graph, s_out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        key = (self._key(args), tuple((k, self._key(v)) for k, v in sorted(kwargs.items())))
        if key not in self._graphs:
            self._graphs[key] = self._capture(args, kwargs)
        s_args, s_kwargs, graph, s_out = self._graphs[key]
        for static, value in zip(s_args, args):
            self._copy(static, value)
        for name, value in kwargs.items():
            self._copy(s_kwargs[name], value)
        graph.replay()
        return self._clone(s_out)
