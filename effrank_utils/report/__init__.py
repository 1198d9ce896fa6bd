"""Layer 5, the read side of a study: the read model ``Study`` (``study``), region/knee/summary (``analysis``),
figures, the interactive panel, comparisons, the dashboard and the headless notebook runner. It imports only
``base``, ``estimate`` and ``records``: never torch, never the training side.
"""
