"""The algorithm: relaxations, derivation, health metrics, strategies, latency, training loops, fixed models.

No output directories, no command line, no NNI runtime: it takes tensors and modules, returns plain data.
"""
