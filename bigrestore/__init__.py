"""bigrestore: restore large fluorescence-microscopy OME-Zarr data with conditional diffusion models."""

__version__ = "0.1.0"
