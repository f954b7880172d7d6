"""The model as a pure function of one agent's tensors, for ``torch.func.vmap``.

A copy of the model has its BatchNorm and dropout layers swapped for functional twins:
:class:`_MaskedBatchNorm` computes batch statistics over the agent's real samples only (padding
has weight 0) and hands back the updated running statistics instead of writing them, and
:class:`_SeededDropout` multiplies by a mask drawn outside the ``vmap`` from the agent's own
generator. The masks are drawn exactly as ``torch.nn.functional.dropout`` draws them on a CPU
(``empty_like(x).bernoulli_(1 - p).div_(1 - p)``), in the same order and from a generator seeded
as the sequential trainer seeds torch's global one, so on a CPU they are bit-identical to the
sequential backend's.

Under mixed precision (``bf16-mixed``) the forward pass runs under the Fabric's autocast as the
sequential backend's does, and the floating parameters are also cast to the compute dtype
explicitly (the fp32 masters get the gradients): autocast does not reach every batched kernel
``vmap`` dispatches to (a CPU's grouped convolution, for one), which would otherwise meet bf16
inputs with fp32 weights. BatchNorm statistics are computed in fp32 either way.

A probe forward pass on another copy records, in call order, the shape and dtype of every dropout
input, and refuses what the functional twins cannot reproduce (a forward that changes a buffer other
than BatchNorm's statistics, a dropout whose input does not lead with the batch).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from flcore.backend import Unsupported

#: dropout layers whose masks are reproduced: nn.Dropout, and the channel-wise ones
DROPOUTS: dict[type, int | None] = {nn.Dropout: None, nn.Dropout1d: 3, nn.Dropout2d: 4, nn.Dropout3d: 5}
#: BatchNorm layers trained with masked statistics (subclasses may change forward: refused)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class DropoutCall:
    """One dropout layer's call in a forward pass: its mask's shape after the batch dimension."""

    name: str
    p: float
    shape: tuple[int, ...]
    dtype: torch.dtype


def blocking_layer(model: nn.Module) -> str | None:
    """The first layer the functional model cannot reproduce, named, or ``None``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and type(module) not in BATCH_NORMS:
            return f"the model's {type(module).__name__} layer '{name}'"
        if isinstance(module, nn.modules.dropout._DropoutNd) and type(module) not in DROPOUTS:
            return f"the model's {type(module).__name__} layer '{name}'"
    return None


class _Tape:
    """What one agent's forward pass reads (sample weights, dropout masks) and writes (running
    statistics, a BatchNorm that saw one value per channel): set before a call, read after it."""

    def start(self, weight: torch.Tensor, noise: list[torch.Tensor], calls: list[DropoutCall]) -> None:
        self.weight, self.noise, self.calls, self.next = weight, noise, calls, 0
        self.buffers: dict[str, torch.Tensor] = {}
        self.single = torch.zeros((), dtype=torch.bool, device=weight.device)

    def mask(self, name: str) -> torch.Tensor:
        call = self.calls[self.next]
        if call.name != name:
            raise RuntimeError(f"dropout layer '{name}' was called where the probe saw '{call.name}': the model's "
                               "forward must call its dropout layers in the same order on every batch")
        self.next += 1
        return self.noise[self.next - 1]


class _SeededDropout(nn.Module):
    def __init__(self, name: str, tape: _Tape) -> None:
        super().__init__()
        self.name, self.tape = name, tape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.tape.mask(self.name)


class _MaskedBatchNorm(nn.Module):
    """BatchNorm in training mode over the samples of weight 1, for one agent (under ``vmap``)."""

    def __init__(self, name: str, source: nn.modules.batchnorm._BatchNorm, tape: _Tape) -> None:
        super().__init__()
        self.name, self.tape = name, tape
        self.eps, self.momentum, self.tracking = source.eps, source.momentum, source.track_running_stats
        self.keep_fp32 = {f"{name}.{p}" if name else p for p, _ in source.named_parameters(recurse=False)}
        self.weight = source.weight
        self.bias = source.bias
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(buffer, getattr(source, buffer, None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # statistics in fp32 at least
        w = self.tape.weight
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        per_sample = x[0, 0].numel()
        count = w.sum() * per_sample
        n = count.clamp_min(1)
        weight = w.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        mean = (x * weight).sum(dims) / n
        centered = x - mean.view(shape)
        var = (centered.square() * weight).sum(dims) / n
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        active = count > 0
        self.tape.single = self.tape.single | (count == 1)
        if self.tracking:
            self._update_statistics(mean.detach(), var.detach() * count / (count - 1).clamp_min(1), active)
        return out.to(dtype)

    def _update_statistics(self, mean: torch.Tensor, unbiased: torch.Tensor, active: torch.Tensor) -> None:
        tracked = self.num_batches_tracked + active.long()
        if self.momentum is None:  # a cumulative average, as nn.BatchNorm's momentum=None
            factor = 1.0 / tracked.clamp_min(1).to(self.running_mean.dtype)
        else:
            factor = self.momentum
        new_mean = (1 - factor) * self.running_mean + factor * mean.to(self.running_mean.dtype)
        new_var = (1 - factor) * self.running_var + factor * unbiased.to(self.running_var.dtype)
        prefix = f"{self.name}." if self.name else ""
        self.tape.buffers[prefix + "running_mean"] = torch.where(active, new_mean, self.running_mean)
        self.tape.buffers[prefix + "running_var"] = torch.where(active, new_var, self.running_var)
        self.tape.buffers[prefix + "num_batches_tracked"] = tracked


class FunctionalModel:
    """The model's forward pass as ``forward(params, buffers, noise, weight, x)``.

    ``sample`` is a model input of a few samples (the probe's). ``precision`` is the Fabric's
    precision plugin: inputs, the forward context (autocast) and outputs follow it as they do for
    the sequential backend's ``_FabricModule``.
    """

    def __init__(self, model: nn.Module, sample: torch.Tensor, precision: Any) -> None:
        self.precision = precision
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.calls = _probe(model, sample, precision)
        self.compute_dtype = _compute_dtype(precision)
        self.keep_fp32: set[str] = set()
        self.tape = _Tape()
        self.module = copy.deepcopy(model)
        for name, layer in list(self.module.named_modules()):
            if type(layer) in BATCH_NORMS:
                norm = _MaskedBatchNorm(name, layer, self.tape)
                self.keep_fp32 |= norm.keep_fp32
                _replace(self.module, name, norm)
            elif type(layer) in DROPOUTS:
                replacement = nn.Identity() if layer.p == 0 else _SeededDropout(name, self.tape)
                _replace(self.module, name, replacement)
        for name, layer in self.module.named_modules(remove_duplicate=False):
            if type(layer) in BATCH_NORMS or type(layer) in DROPOUTS:
                raise Unsupported(f"the model uses its {type(layer).__name__} layer '{name}' in more than one place")

    def forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], noise: list[torch.Tensor],
                weight: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Logits, the updated BatchNorm buffers and whether a BatchNorm saw one value per channel."""
        from torch.func import functional_call

        self.tape.start(weight, noise, self.calls)
        x = self.precision.convert_input(x)
        tensors = {**params, **self.frozen}
        if self.compute_dtype is not None:
            tensors = {n: t.to(self.compute_dtype) if t.is_floating_point() and n not in self.keep_fp32 else t
                       for n, t in tensors.items()}
        with self.precision.forward_context():
            logits = functional_call(self.module, {**tensors, **buffers}, (x,))
        return self.precision.convert_output(logits), self.tape.buffers, self.tape.single

    def draw_noise(self, generators: list[torch.Generator | None], counts: list[int], width: int,
                   device: torch.device) -> list[torch.Tensor]:
        """Each dropout call's masks for one step, stacked ``(agents, width, ...)``: agent ``i``'s
        first ``counts[i]`` rows drawn from ``generators[i]`` (``None``: the agent does not step)."""
        out = []
        for call in self.calls:
            stacked = torch.zeros((len(counts), width, *call.shape), dtype=call.dtype, device=device)
            for i, (generator, count) in enumerate(zip(generators, counts)):
                if generator is not None and count:
                    keep = 1 - call.p
                    if keep == 0:  # p = 1 drops everything and draws nothing, as torch's dropout
                        continue
                    mask = torch.empty((count, *call.shape), dtype=call.dtype, device=device)
                    stacked[i, :count] = mask.bernoulli_(keep, generator=generator).div_(keep)
            out.append(stacked)
        return out


def _compute_dtype(precision: Any) -> torch.dtype | None:
    """The dtype a mixed-precision plugin computes in (``None``: not mixed precision)."""
    from lightning.fabric.plugins.precision import MixedPrecision

    if not isinstance(precision, MixedPrecision):
        return None
    return torch.bfloat16 if precision.precision == "bf16-mixed" else torch.float16


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _probe(model: nn.Module, sample: torch.Tensor, precision: Any) -> list[DropoutCall]:
    """Run a copy of the model on ``sample`` in training mode; record its dropout calls and refuse
    a forward pass that changes buffers other than BatchNorm's or drops along a non-batch dim."""
    probe = copy.deepcopy(model).train()
    calls: list[DropoutCall] = []
    problems: list[str] = []
    norm_buffers = {f"{name}.{b}" if name else b for name, m in probe.named_modules() if type(m) in BATCH_NORMS
                    for b, _ in m.named_buffers(recurse=False)}
    before = {n: b.detach().clone() for n, b in probe.named_buffers() if n not in norm_buffers}

    def recorder(name: str, layer: nn.Module) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            channel_dims = DROPOUTS[type(layer)]
            if x.shape[0] != len(sample) or (channel_dims is not None and x.dim() != channel_dims):
                problems.append(f"dropout layer '{name}' gets a tensor of shape {tuple(x.shape)}, not a batch of "
                                f"{len(sample)} samples{'' if channel_dims is None else f' of {channel_dims} dims'}")
            shape = tuple(x.shape[1:]) if channel_dims is None else (x.shape[1],) + (1,) * (x.dim() - 2)
            calls.append(DropoutCall(name, float(layer.p), shape, x.dtype))
        return hook

    for name, layer in probe.named_modules():
        if type(layer) in DROPOUTS and layer.p > 0:
            layer.register_forward_pre_hook(recorder(name, layer))
    devices = [sample.device] if sample.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():  # the probe's dropout draws are not the run's
        try:
            with precision.forward_context():
                probe(precision.convert_input(sample))
        except Exception as exc:
            raise Unsupported(f"a probe forward pass of the model failed ({type(exc).__name__}: {exc})") from None
    if problems:
        raise Unsupported(problems[0])
    for name, value in before.items():
        if not torch.equal(dict(probe.named_buffers())[name], value):
            raise Unsupported(f"the model's forward pass changes its buffer '{name}'")
    return calls
