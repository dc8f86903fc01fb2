"""The per-step DSGL method (method.md 5): memories, the batch plan, the losses, the L_kl tables, CPU products.

``MEMORY_BANKS`` are the choices of ``-mb/--memorybank``: the paper's hybrid memory and the two
Cluster Contrast baselines (method.md 5.5); kept free of torch imports for the command line.
"""

MEMORY_BANKS: tuple[str, ...] = ("DLhybrid", "CM", "CMhard")
