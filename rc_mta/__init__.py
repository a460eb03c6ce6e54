"""rc-mta: complete or fail workflow tasks by answering an email."""

__version__ = "0.1.0"
