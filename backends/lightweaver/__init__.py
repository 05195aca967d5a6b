"""Lightweaver backend: full-Stokes LTE synthesis from 1-D model atmospheres with the
Lightweaver radiative-transfer framework (Osborne & Milic 2021; PyPI ``lightweaver``,
installed by ``pip install "stokesflow[lightweaver]"``). Synthesis only.
"""

from stokesflow.backends.lightweaver.errors import LightweaverError

__all__ = ["LightweaverError"]
