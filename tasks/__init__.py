"""Task families, one file each; importing this package imports every file here, and each registers its tasks."""

from bench.registry import import_family_files

import_family_files(__name__, __path__)
