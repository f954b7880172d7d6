"""Power-of-choice sampling for flcore."""

from flcore import hookimpl


@hookimpl
def register_samplers(register):
    register("power_of_choice", "flcore_powerofchoice.sampler:PowerOfChoice",
             "Of d size-weighted candidates, the m with the highest last local loss (Cho et al. 2020).")
