"""The runner: training task after task, evaluation, checkpoints and the run folder."""
