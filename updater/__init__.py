"""Model updater: validates new versions and hot-swaps what the model server serves."""
