"""Generic numba Levenberg-Marquardt engine for many independent small fits.

Knows nothing of the Sun: a forward model is a jitted callable that fills the
synthetic observation and its Jacobian for one parameter vector.
"""
