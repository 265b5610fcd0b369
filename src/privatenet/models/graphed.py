"""Inference through captured CUDA graphs: small batches without the launch cost per layer.

A batch-1 forward of a ResNet-18 on a fast GPU is short enough that launching its ~60 kernels
from Python takes longer than running them. A CUDA graph records the launches once and
replays them in one call (docs/design.md §4.4). :class:`GraphedInference` captures one graph
per input shape, dtype and autocast state the first time it meets them (after a few warm-up
calls on a side stream, as the capture requires), then copies each new input into the graph's
static input, replays, and returns a copy of the static output, so a result is never
overwritten by the next call. On any other device, or for shapes beyond ``max_graphs``, it
calls the model as it is. Inference only: calls run under ``torch.inference_mode`` and the
model must be in eval mode (a captured training-mode forward would update batch-norm
statistics at capture and never again).

The graph reads the parameters where they lie: weights changed in place (an optimizer step,
``load_state_dict``) are seen by the next replay; parameters replaced by new tensors are not,
so wrap the model again after such a change.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

log = logging.getLogger(__name__)

#: Untimed calls on a side stream before a capture (cuDNN picks its algorithms there).
CAPTURE_WARMUP = 3


class GraphedInference:
    """``model`` as a callable that replays a captured CUDA graph per input signature.

    ``model``: an ``nn.Module`` in eval mode taking one tensor. ``max_graphs``: at most this
    many signatures are captured (each holds its own static input and output); later new
    signatures run the model directly. Off CUDA nothing is captured. :attr:`graphs` counts the
    captured graphs. Not for use from several threads at once.
    """

    def __init__(self, model: nn.Module, *, max_graphs: int = 8) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs={max_graphs!r} is invalid; give an integer >= 1")
        self.model = model
        self.max_graphs = max_graphs
        self._captured: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = {}
        # One memory pool for every graph of this model. Sharing is safe here because replays
        # run one at a time on one stream and each output is copied out at once: a later graph
        # may reuse an earlier one's freed intermediates, never its static output.
        self._pool = None

    @property
    def graphs(self) -> int:
        return len(self._captured)

    def __call__(self, x: torch.Tensor) -> Any:
        if self.model.training:
            raise RuntimeError("GraphedInference runs inference only; call model.eval() first")
        with torch.inference_mode():
            if not x.is_cuda:
                return self.model(x)
            key = _signature(x)
            found = self._captured.get(key)
            if found is None:
                if len(self._captured) >= self.max_graphs:
                    return self.model(x)
                found = self._capture(x, key)
            graph, static_in, static_out = found
            static_in.copy_(x)
            graph.replay()
            return tree_map(_copy, static_out)

    def _capture(self, x: torch.Tensor, key: tuple) -> tuple:
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP):
                self.model(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.model(static_in)
        self._captured[key] = (graph, static_in, static_out)
        log.debug("captured a CUDA graph for input %s", key)
        return self._captured[key]


def _signature(x: torch.Tensor) -> tuple:
    """What a captured graph is only valid for: the input's layout and the autocast state."""
    autocast = torch.is_autocast_enabled(x.device.type)
    return (tuple(x.shape), x.stride(), x.dtype, str(x.device), autocast,
            torch.get_autocast_dtype(x.device.type) if autocast else None)


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value

