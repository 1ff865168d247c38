"""Synthetic BMDeep-shaped dataset: slides, clinical and lab tables, annotations."""
