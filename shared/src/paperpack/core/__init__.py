"""paperpack core."""
