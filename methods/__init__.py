"""Tuning methods; importing this package registers every one of them."""

from methods import full, linear, prompt  # noqa: F401
