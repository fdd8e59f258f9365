"""Tuning methods, one file each; importing this package imports every file here, and each registers itself."""

from bench.registry import import_family_files

import_family_files(__name__, __path__)
