"""`lastmile bench`: the performance scenarios of issue 4, on the real broker and Redis `make run` uses."""
