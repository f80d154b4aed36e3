"""What the hospital client and the coordinator share: conventions, formats, model, metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedcmr")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
