"""effrank: estimate the effective rank of Vision Transformers by low-rank factorization + distillation."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
