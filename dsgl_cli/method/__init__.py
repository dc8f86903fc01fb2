"""The per-step DSGL method (method.md 5): memories, the batch plan, the losses, the L_kl tables, CPU products.

``MEMORY_BANKS`` are the choices of ``-mb/--memorybank``: the paper's hybrid memory and the two
Cluster Contrast baselines (method.md 5.5); kept free of torch imports for the command line.
"""

MEMORY_BANKS: tuple[str, ...] = ("DLhybrid", "CM", "CMhard")
#: the reference's DLhybrid_v2, unfinished there and not the paper's method: refused with this reason
UNFINISHED_MEMORY_BANKS: dict[str, str] = {
    "DLhybrid_v2": "the reference marks DLhybrid_v2 as unfinished and it is not the paper's method; use DLhybrid",
}
#: The temperature of L_dis, L_kl and the identity-irrelevant labels; the reference fixes it there,
#: and --temp changes L_m alone (method.md 5).
FIXED_TEMPERATURE = 0.05
