"""One module per stage of the compression pipeline; each is plain PyTorch and yields metrics per epoch."""
