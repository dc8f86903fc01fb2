"""dsgl: unsupervised person re-identification with Disentangled Sample Guidance Learning."""

import os as _os

# OpenMP threads that spin while waiting starve the DataLoader workers on small CPUs: measured
# on a loaded 2-core machine, a ResNet-18 step took 5 s with the default policy and 0.5 s with
# a passive one. It must be set before torch loads its OpenMP runtime, hence here.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
