"""Modal screens: help, settings, quit confirmation, the name prompt for saving a tree."""
