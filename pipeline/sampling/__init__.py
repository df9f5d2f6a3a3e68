"""Samplers: the registry of diffusers schedulers, the score-SDE samplers, editing and stored sample batches."""
