"""The ``vectorized`` backend: a round's agents train at once with ``torch.func``.

Every agent's parameters (and buffers) are stacked along a leading dimension; one ``vmap`` of
``grad`` of a ``functional_call`` computes all agents' gradients for a step, and the configured
optimizer's update (any built-in one) is applied to the stack. Each agent gets what the sequential
backend would give it: its batch order, its dropout masks, its BatchNorm statistics, its gradient
clipping, its instruction (epochs, step budget, learning-rate scale). Shards of different sizes
are padded and masked, so the global model equals the sequential backend's up to float rounding.
The round's cohort trains in chunks sized to the device's free memory, measured with a one-agent
probe step.

Agent-side plugins that declare ``vectorizable`` run here: their loss terms inside the ``vmap``,
a gradient plugin's ``vectorized_gradients`` on per-agent, per-sample gradients from a nested
``vmap`` (DP-SGD), a batch plugin's ``epoch_batches`` per agent (padded and masked), their other
steps once per agent. What it cannot reproduce (an fp16 gradient scaler, a plugin that
is not vectorizable, a layer such as ``AlphaDropout`` or ``SyncBatchNorm``, a forward pass that
draws random numbers outside dropout layers or changes other buffers) is named by
:meth:`VectorizedBackend.check`; the run then falls back to ``sequential`` with a warning, or exits
with code 2 when ``strict``.

Modules: :mod:`.backend` (the component, chunking), :mod:`.lockstep` (a chunk's training loop),
:mod:`.functional` (the model as a function, masked BatchNorm, seeded dropout), :mod:`.optimizers`
(stacked optimizer updates, per-agent clipping), :mod:`.memory` (measuring a step's memory).
"""

from flcore_plugins.backends.vectorized.backend import VectorizedBackend, VectorizedParams

__all__ = ["VectorizedBackend", "VectorizedParams"]
