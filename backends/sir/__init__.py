"""SIR backend: writers and parsers of SIR's formats (``io``), its runner (``runner``),
the atomic data shared with the other classical codes (``atomic``) and the backend
(``backend``).

SIR (Ruiz Cobo & del Toro Iniesta 1992) is not bundled: give its executable as the
option ``executable`` or the environment variable ``STOKESFLOW_SIR``.
"""

from stokesflow.backends.sir.errors import SIRError

__all__ = ["SIRError"]
