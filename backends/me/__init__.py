"""The Milne-Eddington backend (numba forward model + lm_solver)."""

from backends.me.backend import MEBackend, MEOptions
from backends.me.lines import Line, get_lines, load_line_table
from backends.me.model import ME_PARAMETERS, MEModel

__all__ = ["MEBackend", "MEOptions", "MEModel", "ME_PARAMETERS", "Line", "get_lines", "load_line_table"]
