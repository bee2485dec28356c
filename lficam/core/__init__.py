"""The ground floor: errors, maps, the probing context, tensor files, progress, pictures."""
