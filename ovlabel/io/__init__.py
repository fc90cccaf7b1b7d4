"""File input/output: images in, atomic writes out."""
