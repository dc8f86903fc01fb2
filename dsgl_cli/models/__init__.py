"""Models of method.md section 2: ResNet/IBN-ResNet backbones, pooling, the re-ID head, weights, checkpoints.

The names below are the choices of ``-a/--arch`` and ``--pooling-type``. They live here, free of
torch imports, so the command line can list them without loading torch (0.6 s instead of 3+ s);
the factories in ``backbones.py`` and ``pooling.py`` implement exactly these names.
"""

ARCHITECTURES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet_ibn50a", "resnet_ibn101a",
)
POOLINGS: tuple[str, ...] = ("gem", "avg", "max")
