"""Task families; importing this package registers every task."""

from tasks import fgvc, micro, vtab  # noqa: F401
