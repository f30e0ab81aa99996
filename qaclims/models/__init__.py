"""Network definitions and loaders shared by the stages."""
