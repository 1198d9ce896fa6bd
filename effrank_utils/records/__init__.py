"""Layer 2, what a study is on disk: the config schema, whose fields declare their roles (``config``, a leaf), and the
run folder -- its layout, the study identity, task rows and ``sweep.csv`` (``run_folder``). No torch.
"""
