"""What a run folder and a checkpoint record about themselves: the data set a checkpoint was trained on, and a
run folder's best checkpoint (only ever a file of that folder, so a copied or moved folder uses its own files)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lficam.checkpoints.loading import read_checkpoint
from lficam.core.errors import UserError
from lficam.core.paths import relative_inside

log = logging.getLogger("lficam")


def recorded_data_config(path: str | Path) -> dict[str, Any] | None:
    """The data module config a training checkpoint records (its ``hyper_parameters.data_config``: where its
    training and test splits come from), or None when it records none."""
    data = (read_checkpoint(path).get("hyper_parameters") or {}).get("data_config")
    return data if isinstance(data, dict) and "_target_" in data else None


def checkpoint_data_config(path: str | Path) -> dict[str, Any]:
    """The data module config a checkpoint was trained with (stored by the training module)."""
    data = recorded_data_config(path)
    if data is None:
        raise UserError(
            f"Checkpoint {str(path)!r} does not record its data set; pass data=<name> (and its options) "
            "to evaluate it."
        )
    return data


def best_checkpoint(folder: Path) -> Path:
    """A run folder's best checkpoint, as its ModelCheckpoint recorded it: ``summary.json``'s
    ``best_checkpoint``, else the ``best_model_path`` of the monitoring ModelCheckpoint's state inside
    ``last.ckpt``; ``last.ckpt`` itself when neither names a file. Only files of this folder are used
    (:func:`checkpoint_in_folder`), so a copied run folder is evaluated with its own checkpoints."""
    folder = Path(folder)
    checkpoints = folder / "checkpoints"
    last = checkpoints / "last.ckpt"
    summary = folder / "summary.json"
    if summary.is_file():
        recorded = [json.loads(summary.read_text()).get("best_checkpoint")]
    elif last.is_file():
        states = read_checkpoint(last).get("callbacks") or {}
        recorded = [
            s.get("best_model_path")
            for key, s in states.items()
            if str(key).startswith("ModelCheckpoint") and isinstance(s, dict) and s.get("monitor")
        ]
    else:
        recorded = []
    for path in recorded:
        found = checkpoint_in_folder(folder, path) if path else None
        if found is not None:
            return found
    if last.is_file():
        return last
    raise UserError(
        f"{str(folder)!r} records no best checkpoint and has no checkpoints/last.ckpt; list the checkpoints "
        "to compare in stability.runs=[a.ckpt,b.ckpt]."
    )


def checkpoint_in_folder(folder: Path, recorded: str | Path) -> Path | None:
    """The file of run folder ``folder`` that a recorded checkpoint path names, or None.

    train.py records paths relative to the run folder. An absolute path (older runs, Lightning's own state)
    counts where it lies inside the folder; one outside it (the folder was copied or moved, and the original
    may still be there) is never followed: its namesake in the folder's ``checkpoints/`` is used instead, with
    a warning."""
    path = Path(str(recorded))
    inside = _part_of(folder, path)
    if inside is not None:
        candidate = folder / inside
        return candidate if candidate.is_file() else None
    namesake = folder / "checkpoints" / path.name
    log.warning(
        "%s records the checkpoint %s, outside the run folder (copied or moved); using %s instead.",
        folder,
        path,
        namesake if namesake.is_file() else "the folder's own checkpoints",
    )
    return namesake if namesake.is_file() else None


def _part_of(folder: Path, path: Path) -> Path | None:
    """``path`` relative to ``folder`` when it lies inside it (symbolic links resolved), else None; a relative
    path is taken as relative to the folder, unless it climbs out of it (``..``)."""
    if not path.is_absolute():
        return None if ".." in path.parts else path
    return relative_inside(path, folder)


def find_checkpoints(runs: Any) -> list[Path]:
    """Checkpoints of a sweep folder (one per run folder: the best, else last) or of a list of paths."""
    items = [runs] if isinstance(runs, str | Path) else list(runs)
    found: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += [
                best_checkpoint(f)
                for f in sorted({p.parent.parent for p in path.glob("**/checkpoints/*.ckpt")})
            ]
        else:
            raise UserError(
                f"stability.runs entry {str(path)!r} is neither a checkpoint nor a folder of runs."
            )
    return found
