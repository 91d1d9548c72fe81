"""The regulator-facing coverage HTTP API: the app, its routes, access control and representations."""
