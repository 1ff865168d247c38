"""MIRAX (3DHISTECH .mrxs) reading helpers and a synthetic writer that OpenSlide 4 opens."""
