"""Resumable training: one checkpoint format for every network (the CNN and the U-Net).

After every epoch a trainer writes, atomically (a ``.partial`` file renamed
into place, so a kill mid-write leaves the previous checkpoint whole), the
weights, the optimiser state, the history, the best epoch and its weights,
torch's random state and the trainer's own random state (e.g. the numpy
generator that draws the U-Net's training crops). A trainer started again on
the same data and settings (same ``digest``) continues after the last
finished epoch and ends with the same model as an uninterrupted run; a
checkpoint of other data or settings is refused, never mixed in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from stokesflow.nn_init.providers import InitError

__all__ = ["TrainingState", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger("stokesflow.train")


class TrainingState(dict):
    """What a trainer needs to continue: ``history`` (list of epoch entries), ``best`` (``loss``,
    ``epoch`` (0-based, -1 before any), ``state`` (best weights or None)) and ``extra`` (the
    trainer's own resumable state, e.g. a numpy generator's ``bit_generator.state``)."""

    @classmethod
    def fresh(cls) -> "TrainingState":
        """The state before the first epoch."""
        return cls(history=[], best={"loss": float("inf"), "epoch": -1, "state": None}, extra={})

    @property
    def start_epoch(self) -> int:
        """Index of the next epoch to run (the number of finished epochs)."""
        return len(self["history"])

    def stopped(self, patience: int) -> bool:
        """True when early stopping already ended the checkpointed run."""
        return bool(self["history"]) and (len(self["history"]) - 1 - int(self["best"]["epoch"]) >= int(patience))


def load_checkpoint(torch: Any, path: str | Path | None, digest: str, net: Any, opt: Any) -> TrainingState:
    """Restore ``net``, ``opt`` and torch's random state from ``path``; the state to continue from.

    Parameters
    ----------
    torch : module
        The imported torch.
    path : path or None
        Checkpoint file; None or a missing file gives a fresh state.
    digest : str
        Digest of the training data and settings the checkpoint must have been written for.
    net, opt : torch.nn.Module, torch.optim.Optimizer
        Loaded in place.

    Returns
    -------
    TrainingState

    Raises
    ------
    InitError
        The checkpoint was written for other data or settings.
    """
    if path is None or not Path(path).exists():
        return TrainingState.fresh()
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    if saved.get("digest") != digest:
        raise InitError(f"checkpoint {path} was written for other training data or settings; "
                        "delete it to start afresh")
    net.load_state_dict(saved["net"])
    opt.load_state_dict(saved["opt"])
    torch.set_rng_state(saved["rng"])
    state = TrainingState(history=list(saved["history"]),
                          best={"loss": float(saved["best_loss"]), "epoch": int(saved["best_epoch"]),
                                "state": saved["best_state"]},
                          extra=dict(saved.get("extra") or {}))
    log.info("resuming training from %s at epoch %d", path, state.start_epoch + 1)
    return state


def save_checkpoint(torch: Any, path: str | Path | None, digest: str, net: Any, opt: Any,
                    state: Mapping[str, Any]) -> None:
    """Write the checkpoint atomically (nothing when ``path`` is None).

    Parameters
    ----------
    torch : module
    path : path or None
    digest : str
        Digest of the training data and settings.
    net, opt : torch.nn.Module, torch.optim.Optimizer
    state : TrainingState
        ``history``, ``best`` and ``extra`` after the finished epoch.
    """
    if path is None:
        return
    path = Path(path)
    best = state["best"]
    tmp = path.with_name(path.name + ".partial")
    torch.save({"digest": digest, "net": net.state_dict(), "opt": opt.state_dict(),
                "history": list(state["history"]), "best_loss": float(best["loss"]), "best_epoch": int(best["epoch"]),
                "best_state": best["state"], "rng": torch.get_rng_state(), "extra": dict(state.get("extra") or {})},
               tmp)
    tmp.replace(path)
