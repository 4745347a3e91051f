"""The errors a user of the Python API or of the command line meets. Each is a
ValueError with one line that names the problem: the CLI prints that line
and exits with status 2; API callers may catch the subclass (or ValueError)."""


class BadImage(ValueError):
    """An image that cannot be read, or an array that is not an image."""


class NoFace(ValueError):
    """A photograph in which no face was found."""


class BadModelFile(ValueError):
    """A verifier model file that is missing or unreadable."""


class BadGalleryFile(ValueError):
    """A gallery file that is missing, unreadable, or made with another model."""
