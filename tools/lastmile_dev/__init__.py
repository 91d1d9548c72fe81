"""Development tooling of lastmile-coverage: the local stack (`lastmile run`), the benchmark and the soak.

Installed beside the project for development (``make``), never into the runtime image.
"""
