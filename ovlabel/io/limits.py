"""Input limits shared by the image reader and the run configs (no heavy imports: the CLI reads them)."""

#: The default pixel limit of a run (``--max-pixels``): 100 megapixels, e.g. 12000 x 8333. Above it an image
#: is skipped without decoding it (its decoded RGB alone would take 286 MiB, and labelling it at full
#: resolution many GiB: docs/troubleshooting.md, "Huge images").
DEFAULT_MAX_PIXELS = 100_000_000
