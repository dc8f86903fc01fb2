"""dsgl: unsupervised person re-identification with Disentangled Sample Guidance Learning."""

__version__ = "0.1.0"
