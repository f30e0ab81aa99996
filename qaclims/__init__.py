"""QA-CLIMS weakly supervised semantic segmentation, stage by stage."""

__version__ = "0.1.0"
