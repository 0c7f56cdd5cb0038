"""The decision flow (task -> hardware -> requirements -> strategy), the `automodel` CLI and the wizard.
Depends on automodel.catalog and automodel.trainer.config only; imports no torch at module level."""
