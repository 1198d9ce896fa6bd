"""Layer 4, what trains a model: datasets and batch pipelines (``data``), teachers by name (``models``), a user's
teacher checkpoint (``checkpoints``), the training loop (``loop``), distillation losses (``distill``) and the
teacher-logit cache (``teacher_cache``).
"""
