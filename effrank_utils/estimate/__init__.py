"""Layer 1, the estimate as pure functions of accuracy tables (numpy, scipy, pandas; no torch): region, knee and
bootstrap intervals (``curves``), the converged verdict (``convergence``), adaptive rank refinement (``refine``),
the margin beyond a validation split's noise (``noise``) and training-free measures of singular values (``spectra``).
"""
