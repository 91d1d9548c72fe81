"""The stream worker: the scan topic folded into the read model (Faust), and the tools that do the same offline."""
