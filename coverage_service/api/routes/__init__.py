"""The coverage API's routers, one concept each: figures, reports, the live stream."""
