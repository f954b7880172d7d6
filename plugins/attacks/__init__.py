"""Built-in attacks: agent-side plugins that control a chosen share of the agents (flcore.attack)."""

from flcore import hookimpl

_MODULE = "flcore_plugins.attacks"


@hookimpl
def register_agent_plugins(register):
    register("sign_flip", f"{_MODULE}.updates:SignFlip", "Attack: malicious agents send -s times their update.")
    register("gaussian_noise", f"{_MODULE}.updates:GaussianNoise",
             "Attack: malicious agents send Gaussian noise N(0, sigma^2) instead of their update.")
    register("scaling", f"{_MODULE}.updates:Scaling",
             "Attack: malicious agents boost their update; model replacement (Bagdasaryan et al. 2020).")
    register("label_flip", f"{_MODULE}.poisoning:LabelFlip", "Attack: malicious agents train on flipped labels.")
    register("backdoor", f"{_MODULE}.backdoor:Backdoor",
             "Attack: a pixel-pattern trigger relabelled to a target class; logs the attack success rate.")
    register("alie", f"{_MODULE}.colluding:ALittleIsEnough",
             "Colluding attack: mean minus z std of the honest updates (A Little Is Enough, Baruch et al. 2019).")
    register("ipm", f"{_MODULE}.colluding:InnerProductManipulation",
             "Colluding attack: -epsilon times the honest mean (inner-product manipulation, Xie et al. 2020).")
