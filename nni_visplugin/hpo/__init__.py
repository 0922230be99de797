"""The NNI and Optuna side: the tuner, the assessor, studies, the experiment runner, ``check``."""
