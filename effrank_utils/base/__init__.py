"""Layer 0, the foundations every layer may use: crash-safe files, safe loading and file locks (``storage``), and
the one rule that derives every random stream's seed (``seeds``). Imports nothing from the package.
"""
