"""Training: the LightningModule, its diagnostics and callbacks, loggers, resume, DDP, run folders."""
