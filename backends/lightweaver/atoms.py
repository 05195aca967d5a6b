"""Minimal Lightweaver model atoms for the project's lines (LTE synthesis).

One atom per element: a ground pseudo-level whose statistical weight is the
neutral stage's partition function at 5040 K, the lower and upper level of every
line (energies from the excitation potential and the line's vacuum wavelength, J,
L, S from its LS terms, so Lightweaver computes the anomalous Zeeman pattern),
and an ionised pseudo-level at the ionisation energy with the ion's partition
function as weight. In LTE this gives the Saha-Boltzmann populations of the line
levels to the accuracy of those two partition functions (a few percent between
4000 and 7000 K). Broadening: ABO collisional cross-sections when the atomic
table gives them (Lightweaver's VdwBarklem), Unsoeld otherwise, and radiative
damping 1e8 s^-1.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from typing import Sequence

from stokesflow.backends.lightweaver.errors import LightweaverError
from stokesflow.backends.sir.atomic import ClassicalLine

__all__ = ["EV_TO_CM1", "RADIATIVE_DAMPING", "import_lightweaver", "model_atoms"]

#: 1 eV in cm^-1.
EV_TO_CM1 = 8065.54429
#: Radiative damping of every line [s^-1].
RADIATIVE_DAMPING = 1.0e8


def import_lightweaver():
    """The ``lightweaver`` module, imported without its start-up warning (no config file).

    Raises
    ------
    LightweaverError
        Not installed (``pip install "stokesflow[lightweaver]"``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import lightweaver
    except ImportError as exc:
        raise LightweaverError(
            f"the lightweaver package is not installed ({exc}); pip install \"stokesflow[lightweaver]\""
        ) from None
    return lightweaver


def model_atoms(lines: Sequence[ClassicalLine]) -> list:
    """Lightweaver ``AtomicModel``s holding ``lines``, one per element.

    Raises
    ------
    LightweaverError
        A line of an ionised stage (only neutral lines are modelled).
    """
    lw = import_lightweaver()
    from lightweaver.atomic_model import AtomicLevel, AtomicModel, LinearCoreExpWings, LineType, VoigtLine
    from lightweaver.atomic_table import Element as LwElement
    from lightweaver.broadening import LineBroadening, RadiativeBroadening, VdwBarklem, VdwUnsold

    by_element: dict[str, list[ClassicalLine]] = {}
    for ln in lines:
        if ln.stage != 1:
            raise LightweaverError(
                f"line {ln.name}: only lines of neutral atoms are modelled by the Lightweaver backend, got stage {ln.stage}"
            )
        by_element.setdefault(ln.element.symbol, []).append(ln)
    atoms = []
    for sym, group in by_element.items():
        el = group[0].element
        levels = [AtomicLevel(E=0.0, g=round(10 ** el.log_u1), label=f"{sym.upper()} I PSEUDO-GROUND", stage=0)]
        vlines = []
        index: dict[tuple, int] = {}

        def level(energy: float, term, tag: str) -> int:
            key = (round(energy, 3), term.S, term.L, term.J)
            if key not in index:
                index[key] = len(levels)
                levels.append(
                    AtomicLevel(E=energy, g=int(2 * term.J + 1), label=f"{sym.upper()} I {tag}", stage=0,
                                J=Fraction(term.J), L=int(term.L), S=Fraction(term.S))
                )
            return index[key]

        for ln in group:
            e_low = ln.excitation * EV_TO_CM1
            e_up = e_low + 1e7 / float(lw.air_to_vac(ln.wavelength / 10.0))
            i = level(e_low, ln.lower, f"{ln.name} LOWER")
            j = level(e_up, ln.upper, f"{ln.name} UPPER")
            elastic = [VdwBarklem(vals=[ln.sigma, ln.alpha])] if ln.sigma > 20 else [VdwUnsold(vals=[1.0, 1.0])]
            vlines.append(VoigtLine(
                j=j, i=i, f=10 ** ln.loggf / (2 * float(ln.lower.J) + 1), type=LineType.CRD,
                quadrature=LinearCoreExpWings(qCore=1.5, qWing=60, Nlambda=60),
                broadening=LineBroadening(natural=[RadiativeBroadening(gamma=RADIATIVE_DAMPING)], elastic=elastic),
            ))
        levels.append(AtomicLevel(E=el.ionisation * EV_TO_CM1, g=round(10 ** el.log_u2), label=f"{sym.upper()} II PSEUDO",
                                  stage=1))
        # Lightweaver wants levels sorted by energy; remap the line indices.
        order = sorted(range(len(levels)), key=lambda k: levels[k].E)
        new = {old: n for n, old in enumerate(order)}
        for vl in vlines:
            vl.i, vl.j = new[vl.i], new[vl.j]
        atoms.append(
            AtomicModel(element=LwElement(Z=el.Z), levels=[levels[k] for k in order], lines=vlines, continua=[],
                        collisions=[])
        )
    return atoms
