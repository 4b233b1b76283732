"""ClearScan: self-hosted medical-imaging AI platform."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clearscan")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
