"""The federated engine: the round loop, local training, evaluation, checkpoints and run folders."""
