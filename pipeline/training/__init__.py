"""A training run's parts besides its loop: typed settings, building what it trains, the losses, checkpoints,
learning-rate schedules and run control."""
