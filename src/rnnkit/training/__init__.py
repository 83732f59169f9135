"""The generic training stack: task configs and their flags, one LightningModule, one Trainer."""
