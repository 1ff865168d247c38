"""Quality control as pictures: the published slide, its boxes, and the collection page."""
