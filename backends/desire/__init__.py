"""DeSIRe backend: DeSIRe's own inputs (``io``) on top of SIR's formats and runner
(``stokesflow.backends.sir``), and the backend (``backend``).

DeSIRe (Ruiz Cobo et al. 2022) is not bundled: give its executable as the option
``executable`` or the environment variable ``STOKESFLOW_DESIRE``.
"""

from stokesflow.backends.desire.errors import DesireError

__all__ = ["DesireError"]
