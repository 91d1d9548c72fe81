"""The read model in Redis: its Lua scripts, the writer that folds batches into it, and the queries over it."""
