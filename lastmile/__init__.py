"""lastmile-coverage: carriers' last-mile scans in, exact express-to-villages coverage figures out."""

__version__ = "0.1.0"
