"""MIRAX (3DHISTECH .mrxs) reading: completeness and inventory, slide discovery, and the direct
tile reader. The synthetic writer lives apart, in `core.synthetic`."""
