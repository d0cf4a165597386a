"""Alias of ``pemn.testing.bundles`` for the modules that still import it from here
(``tests/store/bundles.py``, ``bench/bench_store.py``), until they import ``pemn.testing``."""

from pemn.testing.bundles import deterministic_masks, edit_manifest, make_bundle, make_model_state

__all__ = ["deterministic_masks", "edit_manifest", "make_bundle", "make_model_state"]
