"""One module per stage of the compression pipeline, each plain PyTorch: it builds its model, trains one config
and yields metrics per epoch, and declares itself once as a module-level ``STAGE`` (``tuner.registry.Stage``)."""
