"""The training job (`retain train`, run by `make train`)."""
