"""msptycho: multislice electron ptychography of core-shell nanoparticles, from 4D-STEM to 3-D maps."""

__version__ = "0.1.0"
