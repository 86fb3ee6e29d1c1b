"""sketchserve."""
