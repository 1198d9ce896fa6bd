"""Layer 3, low-rank layers: ``LowRankLinear``, the inits (registry ``INITS``), the targeted maps and parameter
accounting (``factorize``), and the singular values of a model's maps (``weight_spectra``).
"""
