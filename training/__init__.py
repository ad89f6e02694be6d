"""The training job (`python -m training`, run by `make train`)."""
