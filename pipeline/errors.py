"""Expected failures: printed as one line (`error: <file>: <reason>`), exit code 1, no traceback."""

from pathlib import Path


class MedpipeError(Exception):
    """An expected failure caused by the user's input, tied to a file.

    Args:
        file: The file (or key, flag, image row) the failure is tied to; the message starts with it.
        reason: One line saying what is wrong.
    """

    exit_code = 1

    def __init__(self, file: str | Path, reason: str) -> None:
        self.file = str(file)
        self.reason = reason
        super().__init__(f"{self.file}: {reason}")

    def __reduce__(self) -> tuple:  # rebuilt whole when it crosses processes (a Dask worker's trial)
        return type(self), (self.file, self.reason)


class ConfigError(MedpipeError):
    """params.yaml (or a flag) names an unknown key or an invalid value: a usage error."""

    exit_code = 2


class DataError(MedpipeError):
    """The data set is missing, unreadable or fails validation."""


class ImageError(DataError):
    """An image file that cannot be read: empty, truncated, not an image, unsupported DICOM."""
