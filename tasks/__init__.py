"""Task families; importing this package registers every task."""

from tasks import micro  # noqa: F401
