"""What a training run needs besides the model: checkpoints, learning-rate schedules, run control."""
