"""trainer: learn PEMN masks on real data and publish bundles (imports pemn only)."""
