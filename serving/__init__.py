"""The BentoML scoring service (`serving/service.py`), started by `retain serve` / `make serve`."""
