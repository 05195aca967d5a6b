"""The Milne-Eddington backend (numba forward model + lm_solver)."""

from stokesflow.backends.me.backend import MEBackend, MEOptions
from stokesflow.backends.me.lines import Line, get_lines, load_line_table
from stokesflow.backends.me.model import ME_PARAMETERS, MEModel

__all__ = ["MEBackend", "MEOptions", "MEModel", "ME_PARAMETERS", "Line", "get_lines", "load_line_table"]
