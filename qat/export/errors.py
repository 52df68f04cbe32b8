"""The one exception type of export, import and generation: a user's bad input, one line."""

from qat.errors import QatError


class ExportError(QatError, ValueError):
    """A run, folder or model that cannot be exported, loaded or imported; says why and what
    to do."""
