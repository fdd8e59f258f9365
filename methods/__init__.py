"""Tuning methods; importing this package registers every one of them."""

from methods import adaptformer, bitfit, full, ia3, linear, ln_tuning, lora, lycoris, pixels, prompt, ssf  # noqa: F401
