"""The leaf layer: atomic files, caches, seeding, devices, checkpoints, errors, the registries.

Nothing here imports another layer of the package.
"""
