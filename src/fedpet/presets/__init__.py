"""Packaged study files (``fedpet study --preset NAME``)."""
