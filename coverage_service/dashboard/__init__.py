"""The regulators' dashboard (issue 12): its static files, served by the coverage service."""
