"""CPU levers (an experiment, `python -m experiments.levers`): the same network and input under
each execution option, timed in one run.

Each lever turns a one-domain network into a callable on an NCHW float batch and includes
whatever conversion it needs inside the call (a server would pay it too). Every lever's logits
are compared with plain eager ones, so a lever that changes the answer (bf16) says by how much.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.common import time_calls, torch_threads
from benchmarks.workloads import HEADLINE, Shape, executed_macs, masked_network
from model_store import MultiDomainResNet, domain_view, prune_to_union

log = logging.getLogger(__name__)
Runner = Callable[[Tensor], Tensor]


class OneDomain(nn.Module):
    """`model(x, 0)` as a one-argument module, which tracing and compiling need."""

    def __init__(self, model: MultiDomainResNet):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, 0)


def _eager(m: nn.Module, _: Tensor) -> Runner:
    return lambda x: _no_grad(m, x)


def _no_grad(m: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return m(x)


def _inference_mode(m: nn.Module, _: Tensor) -> Runner:
    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return m(x)

    return run


def _one_thread(m: nn.Module, example: Tensor) -> Runner:
    inner = _inference_mode(m, example)

    def run(x: Tensor) -> Tensor:
        with torch_threads(1):
            return inner(x)

    return run


def _channels_last(m: nn.Module, example: Tensor) -> Runner:
    m = copy.deepcopy(m).to(memory_format=torch.channels_last)  # .to() converts in place
    inner = _inference_mode(m, example)
    return lambda x: inner(x.contiguous(memory_format=torch.channels_last))


def _jit(m: nn.Module, example: Tensor, finish: Callable[..., Any]) -> Runner:
    """Trace for this input shape, then `finish` (freeze or optimize_for_inference).

    The shortcut's padding depends on the shape, hence the tracer's warning; TorchScript is
    deprecated in this torch, hence the other. Both are silenced: the figure is the point, and
    each trace is only ever run at its own shape.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        script = finish(torch.jit.trace(m, example, check_trace=False))
    return lambda x: _no_grad(script, x)


def _trace_freeze(m: nn.Module, example: Tensor) -> Runner:
    """Freezing turns BN statistics into constants and folds each BN into the conv before it."""
    return _jit(m, example, torch.jit.freeze)


def _optimize_for_inference(m: nn.Module, example: Tensor) -> Runner:
    """Freeze + conv/BN folding + oneDNN (MKLDNN) layouts and fused conv-add-ReLU."""
    return _jit(m, example, torch.jit.optimize_for_inference)


def _bf16(m: nn.Module, example: Tensor) -> Runner:
    def run(x: Tensor) -> Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x).float()

    return run


def _compile(m: nn.Module, example: Tensor) -> Runner:
    compiled = torch.compile(m)
    return _inference_mode(compiled, example)


LEVERS: dict[str, Callable[[nn.Module, Tensor], Runner]] = {
    "eager, no_grad": _eager,
    "eager, inference_mode": _inference_mode,
    "1 thread": _one_thread,
    "channels_last": _channels_last,
    "jit trace + freeze (BN folded)": _trace_freeze,
    "jit optimize_for_inference (oneDNN)": _optimize_for_inference,
    "bf16 autocast": _bf16,
    "torch.compile": _compile,
}


def served_network(shape: Shape) -> MultiDomainResNet:
    """What the server runs for a one-domain batch: β = 0.5, the domain's own filters."""
    return domain_view(prune_to_union(masked_network(shape, 4, 0.5, seed=11)), 0)


def measure(
    batches: tuple[int, ...], seconds: float, levers: tuple[str, ...], shape: Shape = HEADLINE
) -> dict[str, Any]:
    """Per batch and lever: latency, speedup over plain eager, max logit change. One network
    only (what the server runs): each trace or compile is per input shape and costs seconds."""
    model = served_network(shape)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, shape.input_size, shape.input_size)
        reference = _no_grad(OneDomain(model), x)
        runners, setup, change = [], [], []
        for lever in levers:
            started = time.perf_counter()
            run = LEVERS[lever](OneDomain(model), x)
            first = run(x)  # traces and compiles happen here
            setup.append(time.perf_counter() - started)
            change.append(float((first - reference).abs().max()))
            runners.append(partial(run, x))
        timings = time_calls(runners, seconds * len(levers))
        for i, (lever, timing) in enumerate(zip(levers, timings, strict=True)):
            rows.append(
                {
                    "shape": shape.label,
                    "network": "BAP β=0.5, own filters",
                    "gmacs_per_image": executed_macs(model) / 1e9,
                    "batch": batch,
                    "lever": lever,
                    "ms": timing.median * 1e3,
                    "reps": timing.reps,
                    "speedup_vs_eager": timings[0].median / timing.median,
                    "setup_s": setup[i],
                    "max_abs_logit_change": change[i],
                }
            )
        log.info("levers: batch %d done", batch)
    return {"rows": rows}


if __name__ == "__main__":  # python -m experiments.levers: the full run, results as JSON
    import json
    import sys

    from benchmarks.common import machine

    figures = measure((1, 32), 0.4, tuple(LEVERS))
    sys.stdout.write(json.dumps({"machine": machine(), "figures": figures}, indent=2) + "\n")
