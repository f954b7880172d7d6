"""Built-in agent-side plugins."""

from flcore import hookimpl

_MODULE = "flcore_plugins.agent_plugins"


@hookimpl
def register_agent_plugins(register):
    register("proximal", f"{_MODULE}.proximal:Proximal",
             "FedProx's proximal term mu/2 * ||w - w_global||^2 in every local step (Li et al. 2020).")
    register("feddyn_regularizer", f"{_MODULE}.feddyn:FedDynRegularizer",
             "FedDyn's agent side: -<g_k, w> + alpha/2 * ||w - w_global||^2, g_k kept per agent.")
    register("qffl_loss", f"{_MODULE}.qffl:QFFLLoss",
             "q-FFL's agent side: sends the global model's loss on the agent's shard before training.")
    register("moon", f"{_MODULE}.moon:Moon",
             "MOON's model-contrastive term toward the global representation (Li et al. 2021).")
    register("scaffold_correction", f"{_MODULE}.scaffold:ScaffoldCorrection",
             "SCAFFOLD's agent side: corrects each step by c - c_i and keeps c_i per agent.")
    register("dp_sgd", f"{_MODULE}.dp_sgd:DPSGD",
             "Sample-level DP-SGD: Poisson batches, clipped per-sample gradients, Gaussian noise, epsilon per agent.")
    register("finetune", f"{_MODULE}.finetune:Finetune",
             "Local fine-tuning: k steps from the global model on the agent's data before it is scored.")
    register("fedper", f"{_MODULE}.fedper:FedPer",
             "FedPer's personal head (Arivazhagan et al. 2019): the named modules stay per agent, never aggregated.")
    register("fedrep", f"{_MODULE}.fedper:FedRep",
             "FedRep (Collins et al. 2021): the personal head trained first, then the shared body.")
    register("ditto", f"{_MODULE}.ditto:Ditto",
             "Ditto (Li et al. 2021): a personal model per agent pulled toward the global one by lambda.")
    register("fedbn", f"{_MODULE}.fedbn:FedBN",
             "FedBN (Li et al. 2021): BatchNorm weights and statistics stay with each agent.")
    register("perfedavg", f"{_MODULE}.perfedavg:PerFedAvg",
             "Per-FedAvg (Fallah et al. 2020): a MAML starting point, adapted per agent by one step before scoring.")
    register("pfedme", f"{_MODULE}.pfedme:PFedMe",
             "pFedMe (Dinh et al. 2020): a personal model per agent, the proximal point of its loss around w.")
