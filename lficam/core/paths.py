"""Paths relative to a folder, for files that must read the same on another machine or after a copy."""

from __future__ import annotations

from pathlib import Path


def relative_inside(path: Path, folder: Path) -> Path | None:
    """``path`` relative to ``folder`` when it lies in it, else None.

    Compared first as written, then with symbolic links resolved, so that a folder reached through a link (a
    study folder on a linked disk, a copied run folder) still counts. ``Path()`` when ``path`` is the folder
    itself."""
    for a, b in ((path, folder), (path.resolve(), folder.resolve())):
        try:
            return a.relative_to(b)
        except ValueError:
            continue
    return None
